"""Training: the 3D-UNet, its losses, learning-rate schedules, augmentation, checkpoints,
Horovod workers, and the trainer.
"""
