"""Reference architectures: the demo's digits CNN and the entries' backbones."""
from mntk.models.digits import digits_cnn, squeeze_excite

__all__ = ["digits_cnn", "squeeze_excite"]
