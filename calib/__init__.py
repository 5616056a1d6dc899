"""Calibration: observe a float model on text, choose static scales, quantize, write the artifact."""
