"""Export: calibration Hessians, GPTQ, the artifact format, code size and the byte budget."""
