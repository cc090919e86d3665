"""Export: calibration Hessians, quantization schemes (GPTQ, LQER-asym, int8 gates), the artifact format,
code size and the byte budget."""
