"""Export: a trained run folder to an export folder (model, config, post-processing, ONNX),
which inference loads.
"""
