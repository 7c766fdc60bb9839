"""Search engines over the 3D-UNet (Ray Tune + Optuna + ASHA, Keras Tuner); the search issue fills this in."""
