"""Operator registries: how each ONNX operator takes part in quantization.

Literal tables, one per role; an operator in none of them runs in float between a
DequantizeLinear and (where a quantized consumer needs it) a QuantizeLinear.
"""

from __future__ import annotations

#: Matrix products with a weight: op -> (activation input, weight input, bias input).
#: The weight is quantized per output channel, int8 symmetric; the bias to int32 at s_x * s_w.
COMPUTE = {
    "Conv": (0, 1, 2),
    "ConvTranspose": (0, 1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1, None),
}

#: Matrix products whose integer kernel can write a float output (int32 accumulator times scale):
#: ONNX Runtime fuses DequantizeLinear -> MatMul into MatMulIntegerToFloat and DequantizeLinear ->
#: Gemm into QGemm without an output scale.  A Conv has no such form: ONNX Runtime (and ONNX's
#: own QLinearConv) needs a QuantizeLinear after it, and without one runs the Conv in float on
#: dequantized weights, slower than the float model.  ConvTranspose is not fused either way.
FLOAT_OUTPUT = {"ConvTranspose", "Gemm", "MatMul"}

#: Elementwise operators of two tensors, computed in integers after rescaling to a common scale.
BINARY = {"Add", "Mul"}

#: Saturating activations that fold into the preceding quantized operator (its requantized output
#: is clamped) when they are its only consumer.
FUSABLE = {"Relu", "Clip"}

#: Elementwise functions of one tensor (other inputs: scalar constants).  A connected set of them
#: with one activation input and one output is a single function of that input, which integer
#: hardware evaluates as a lookup table over the input codes.
ELEMENTWISE = {
    "Abs", "Add", "Ceil", "Clip", "Cos", "Div", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid",
    "HardSwish", "LeakyRelu", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Pow", "Reciprocal",
    "Relu", "Round", "Selu", "Sigmoid", "Sin", "Softplus", "Softsign", "Sqrt", "Sub", "Tanh",
    "ThresholdedRelu",
}

#: Operators with a quantized data input 0 and a quantized output of their own scale
#: (a nearest-neighbour Resize only copies values, so it passes its input's scale through instead).
REQUANTIZING = {
    "AveragePool", "GlobalAveragePool", "LayerNormalization", "ReduceMean", "Resize", "Softmax",
}

#: Operators that only move, select or take the maximum of values: every output keeps the scale
#: and zero point of data input 0, so they run on integer codes unchanged.
PASS_THROUGH = {
    "DepthToSpace", "Expand", "Flatten", "Gather", "GlobalMaxPool", "Identity", "MaxPool", "Pad",
    "ReduceMax", "ReduceMin", "Reshape", "Slice", "SpaceToDepth", "Split", "Squeeze", "Tile",
    "Transpose", "Unsqueeze",
}

#: Inputs and output share one scale (a runtime can then concatenate integer codes).
CONCAT = {"Concat"}
