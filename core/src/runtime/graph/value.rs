//! Values of the interpreter: a candle tensor plus the ONNX dtype it stands
//! for. Floats are computed in f32 whatever their dtype; every integer type
//! is held in i64 (exact for all of them, and candle has no i8) and bool in
//! u8, so integer semantics (wrapping, saturation, exact products) are ours
//! to apply from the tag.

use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor};
use half::{bf16, f16};

use crate::{DType, TensorData};

/// An error inside one op; the interpreter adds the node's name and op.
#[derive(Debug)]
pub(crate) struct OpError(pub(crate) String);

impl From<candle_core::Error> for OpError {
    fn from(e: candle_core::Error) -> Self {
        OpError(e.to_string())
    }
}

impl From<crate::Error> for OpError {
    fn from(e: crate::Error) -> Self {
        OpError(e.to_string())
    }
}

pub(crate) type OpResult<T> = std::result::Result<T, OpError>;

macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::runtime::graph::value::OpError(format!($($arg)*)))
    };
}
pub(crate) use fail;

/// Elements a single value may have: 2³¹ (8 GiB of f32). A model asking
/// for more (a huge ConstantOfShape, Expand or Range) gets an error
/// instead of an allocation failure that would abort the process.
pub(crate) const MAX_ELEMENTS: usize = 1 << 31;

pub(crate) fn check_size(dims: &[usize], what: &str) -> OpResult<usize> {
    match crate::tensor::checked_numel(dims) {
        Some(n) if n <= MAX_ELEMENTS => Ok(n),
        _ => fail!("{what} of shape {dims:?} is too large"),
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Value {
    pub(crate) t: Tensor,
    pub(crate) dt: DType,
}

pub(crate) fn is_float(dt: DType) -> bool {
    matches!(dt, DType::F32 | DType::F16 | DType::Bf16)
}

pub(crate) fn is_int(dt: DType) -> bool {
    matches!(
        dt,
        DType::I4 | DType::U4 | DType::I8 | DType::U8 | DType::I16 | DType::I32 | DType::I64
    )
}

/// The candle dtype a value of ONNX dtype `dt` is held in.
pub(crate) fn storage(dt: DType) -> CDType {
    match dt {
        DType::Bool => CDType::U8,
        d if is_int(d) => CDType::I64,
        _ => CDType::F32,
    }
}

/// Wraps an i64 to the range of integer type `dt` (two's complement), as a
/// C cast does.
pub(crate) fn wrap(v: i64, dt: DType) -> i64 {
    match dt {
        DType::I4 => ((v as i8) << 4 >> 4) as i64,
        DType::U4 => v & 15,
        DType::I8 => v as i8 as i64,
        DType::I16 => v as i16 as i64,
        DType::U8 => v as u8 as i64,
        DType::I32 => v as i32 as i64,
        _ => v,
    }
}

/// The range of a quantized integer type.
pub(crate) fn int_range(dt: DType) -> OpResult<(i64, i64)> {
    Ok(match dt {
        DType::I4 => (-8, 7),
        DType::U4 => (0, 15),
        DType::I8 => (-128, 127),
        DType::I16 => (i16::MIN as i64, i16::MAX as i64),
        DType::U8 => (0, 255),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        DType::I64 => (i64::MIN, i64::MAX),
        d => fail!("{d} is not an integer type"),
    })
}

impl Value {
    pub(crate) fn new(t: Tensor, dt: DType) -> Self {
        Value { t, dt }
    }

    pub(crate) fn f32(t: Tensor) -> Self {
        Value { t, dt: DType::F32 }
    }

    pub(crate) fn bool(t: Tensor) -> Self {
        Value { t, dt: DType::Bool }
    }

    pub(crate) fn dims(&self) -> &[usize] {
        self.t.dims()
    }

    pub(crate) fn rank(&self) -> usize {
        self.t.rank()
    }

    pub(crate) fn numel(&self) -> usize {
        self.t.elem_count()
    }

    pub(crate) fn is_float(&self) -> bool {
        is_float(self.dt)
    }

    pub(crate) fn is_int(&self) -> bool {
        is_int(self.dt)
    }

    /// The elements, in order, as i64 (integer or bool values).
    pub(crate) fn to_i64s(&self) -> OpResult<Vec<i64>> {
        let flat = self.t.flatten_all()?;
        Ok(match self.t.dtype() {
            CDType::I64 => flat.to_vec1::<i64>()?,
            CDType::U8 => flat.to_vec1::<u8>()?.into_iter().map(i64::from).collect(),
            d => fail!("expected an integer tensor, got {d:?}"),
        })
    }

    /// The elements, in order, as f32 (any dtype).
    pub(crate) fn to_f32s(&self) -> OpResult<Vec<f32>> {
        Ok(self
            .t
            .flatten_all()?
            .to_dtype(CDType::F32)?
            .to_vec1::<f32>()?)
    }

    /// The elements as f64 (integers exactly up to 2⁵³).
    pub(crate) fn to_f64s(&self) -> OpResult<Vec<f64>> {
        Ok(match self.t.dtype() {
            CDType::I64 => self.to_i64s()?.into_iter().map(|v| v as f64).collect(),
            _ => self.to_f32s()?.into_iter().map(f64::from).collect(),
        })
    }

    /// The one element of a scalar or one-element tensor, as f64.
    pub(crate) fn scalar_f64(&self, what: &str) -> OpResult<f64> {
        if self.numel() != 1 {
            fail!("{what} must be a scalar, has shape {:?}", self.dims())
        }
        Ok(self.to_f64s()?[0])
    }

    /// A 1-D integer input (shape, pads, axes…) as i64s.
    pub(crate) fn ints_1d(&self, what: &str) -> OpResult<Vec<i64>> {
        if !self.is_int() {
            fail!("{what} must be integers, got {}", self.dt)
        }
        if self.rank() > 1 {
            fail!("{what} must be 1-D, has shape {:?}", self.dims())
        }
        self.to_i64s()
    }
}

/// A tensor of `dims` from i64 values, tagged `dt`.
pub(crate) fn int_value(v: Vec<i64>, dims: &[usize], dt: DType) -> OpResult<Value> {
    Ok(Value::new(
        Tensor::from_vec(v, dims.to_vec(), &Device::Cpu)?,
        dt,
    ))
}

/// A tensor of `dims` filled with `v` (converted to the storage of `dt`).
pub(crate) fn full(v: f64, dims: &[usize], dt: DType) -> OpResult<Value> {
    check_size(dims, "a filled tensor")?;
    let dev = &Device::Cpu;
    let t = match storage(dt) {
        CDType::F32 => Tensor::full(v as f32, dims.to_vec(), dev)?,
        CDType::I64 => Tensor::full(wrap(v as i64, dt), dims.to_vec(), dev)?,
        _ => Tensor::full(u8::from(v != 0.0), dims.to_vec(), dev)?,
    };
    Ok(Value::new(t, dt))
}

/// A model constant as a value: floats (and ggml blocks) to f32, integers
/// to i64, bool to u8.
pub(crate) fn from_model_tensor(t: &crate::Tensor) -> OpResult<Value> {
    let dims = t.shape.clone();
    let b = t.bytes();
    let dev = &Device::Cpu;
    let ints = |v: Vec<i64>| -> OpResult<Tensor> { Ok(Tensor::from_vec(v, dims.clone(), dev)?) };
    let want = t.dtype.byte_len(t.row_len(), t.numel())?;
    if want != b.len() {
        fail!(
            "tensor {}: {} {:?} needs {want} bytes, has {}",
            t.name,
            t.dtype,
            t.shape,
            b.len()
        )
    }
    Ok(match t.dtype {
        DType::I4 | DType::U4 => Value::new(
            ints(
                (0..t.numel())
                    .map(|i| crate::tensor::nibble(t.dtype, b, i))
                    .collect(),
            )?,
            t.dtype,
        ),
        DType::I8 => Value::new(
            ints(b.iter().map(|&x| x as i8 as i64).collect())?,
            DType::I8,
        ),
        DType::U8 => Value::new(ints(b.iter().map(|&x| x as i64).collect())?, DType::U8),
        DType::I16 => Value::new(
            ints(
                b.chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect(),
            )?,
            DType::I16,
        ),
        DType::I32 => Value::new(
            ints(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
            )?,
            DType::I32,
        ),
        DType::I64 => Value::new(
            ints(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                    .collect(),
            )?,
            DType::I64,
        ),
        DType::Bool => Value::bool(Tensor::from_vec(
            b.iter().map(|&x| u8::from(x != 0)).collect::<Vec<u8>>(),
            dims,
            dev,
        )?),
        DType::F16 | DType::Bf16 => Value::new(Tensor::from_vec(t.to_f32()?, dims, dev)?, t.dtype),
        _ => Value::f32(Tensor::from_vec(t.to_f32()?, dims, dev)?),
    })
}

/// A value as a model tensor named `name`, in the bytes of its dtype.
pub(crate) fn to_model_tensor(name: &str, v: &Value) -> OpResult<crate::Tensor> {
    let dims = v.dims().to_vec();
    let bytes: Vec<u8> = match v.dt {
        DType::F32 => return Ok(crate::Tensor::from_f32(name, dims, v.to_f32s()?)?),
        DType::F16 => v
            .to_f32s()?
            .into_iter()
            .flat_map(|x| f16::from_f32(x).to_le_bytes())
            .collect(),
        DType::Bf16 => v
            .to_f32s()?
            .into_iter()
            .flat_map(|x| bf16::from_f32(x).to_le_bytes())
            .collect(),
        DType::I8 | DType::U8 | DType::Bool => v.to_i64s()?.into_iter().map(|x| x as u8).collect(),
        DType::I16 => v
            .to_i64s()?
            .into_iter()
            .flat_map(|x| (x as i16).to_le_bytes())
            .collect(),
        DType::I4 | DType::U4 => {
            let codes = v.to_i64s()?;
            let mut packed = vec![0u8; codes.len().div_ceil(2)];
            for (i, c) in codes.iter().enumerate() {
                packed[i / 2] |= ((*c as u8) & 15) << (4 * (i % 2));
            }
            packed
        }
        DType::I32 => v
            .to_i64s()?
            .into_iter()
            .flat_map(|x| (x as i32).to_le_bytes())
            .collect(),
        DType::I64 => v
            .to_i64s()?
            .into_iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::Ggml(t) => fail!("cannot store a {} value", t.name()),
    };
    Ok(crate::Tensor::new(
        name,
        dims,
        v.dt,
        TensorData::Owned(Arc::new(bytes)),
    )?)
}

/// A contiguous copy of `t` when it is not contiguous already (candle's
/// index_select and custom ops need one).
pub(crate) fn contiguous(t: &Tensor) -> OpResult<Tensor> {
    Ok(if t.is_contiguous() {
        t.clone()
    } else {
        t.contiguous()?
    })
}

/// `t` with the elements at `idx` along `dim` (every index checked by the
/// caller to be in range).
pub(crate) fn select(t: &Tensor, idx: &[usize], dim: usize) -> OpResult<Tensor> {
    let mut dims = t.dims().to_vec();
    dims[dim] = idx.len();
    if idx.is_empty() || t.elem_count() == 0 {
        return Ok(Tensor::zeros(dims, t.dtype(), &Device::Cpu)?);
    }
    let ids: Vec<u32> = idx
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| OpError(format!("index {i} too large"))))
        .collect::<OpResult<_>>()?;
    let ids = Tensor::from_vec(ids, idx.len(), &Device::Cpu)?;
    Ok(contiguous(t)?.index_select(&ids, dim)?)
}

/// Normalises a possibly negative axis (counted from the end) for rank
/// `rank`; `extra` = 1 where the axis may equal the rank (Flatten).
pub(crate) fn axis(a: i64, rank: usize, extra: usize) -> OpResult<usize> {
    let v = if a < 0 { a + rank as i64 } else { a };
    if v < 0 || v >= (rank + extra) as i64 {
        fail!("axis {a} is out of range for rank {rank}")
    }
    Ok(v as usize)
}

/// Numpy's broadcast shape of two shapes.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> OpResult<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let x = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let y = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            fail!("shapes {a:?} and {b:?} do not broadcast")
        };
    }
    Ok(out)
}

/// `t` broadcast to `dims` (a view).
pub(crate) fn broadcast_to(t: &Tensor, dims: &[usize]) -> OpResult<Tensor> {
    if t.dims() == dims {
        return Ok(t.clone());
    }
    Ok(t.broadcast_as(dims.to_vec())?)
}
