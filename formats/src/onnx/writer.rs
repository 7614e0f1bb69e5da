//! ONNX writer: emits a graph model as an ONNX file.
