//! `cast`: the float type weights are stored in (f32, f16, bf16). Writers
//! store float weights this way: GGUF as F32/F16/BF16 tensors, Hugging Face
//! folders as safetensors of that dtype, ONNX as f16 initializers read
//! through Cast nodes, TFLite as f16 buffers behind DEQUANTIZE.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{CheckContext, Context, FloatType, ModelView, Outcome, Pass, QuantKind, State};
use crate::error::usage;
use crate::registry::{Changes, Needs};

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Cast {
    pub dtype: FloatType,
}

impl Pass for Cast {
    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn changes(&self) -> Changes {
        Changes {
            dtypes: true,
            ..Default::default()
        }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("plain data")
    }

    fn check(&self, view: &mut ModelView, _: &CheckContext) -> Result<()> {
        if view.quant != QuantKind::None {
            return Err(usage(
                "dtype: a cast after quantization has nothing left to cast",
            ));
        }
        Ok(())
    }

    fn run(&self, state: &mut State, _: &Context) -> Result<Outcome> {
        state.dtype = Some(self.dtype);
        Ok(Outcome::default())
    }
}
