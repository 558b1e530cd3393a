"""Soft labels: the encoder (real MiniLM backbone) takes soft targets of the right shape."""

import numpy as np
import pytest

from cascade.errors import InvalidInput


def test_the_encoder_takes_soft_targets_of_the_right_shape():
    from cascade_export.build.encoder import train_encoder

    texts = ["good film", "bad film", "fine film", "awful film"] * 4
    labels = np.array([1, 0, 1, 0] * 4)
    with pytest.raises(InvalidInput, match=r"soft labels must be finite \[16, 2\]"):
        train_encoder(texts, labels, 2, epochs=1, progress=False, soft_labels=np.ones((16, 3)), backbone="minilm-l6")
    soft = np.eye(2)[labels] * 0.8 + 0.1
    model = train_encoder(
        texts, labels, 2, epochs=1, batch_size=8, progress=False, soft_labels=soft, backbone="minilm-l6"
    )
    assert model.train_stats["soft_labels"] == 1.0 and model.backbone == "minilm-l6"
