"""The words the commands print."""

from unet3d.text import plural


def test_plural():
    assert [plural(n, "epoch") for n in (0, 1, 2, 1.5)] == ["0 epochs", "1 epoch", "2 epochs",
                                                            "1.5 epochs"]
