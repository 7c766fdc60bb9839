"""Search spaces as data (Int / Float / Choice over RunConfig fields, presets, YAML/JSON files) and
their translation to each engine's own space (Optuna, Keras Tuner, TensorBoard HParams)."""
