"""pmdrop: dropout whose training mask is stored at one bit per element, bit-identical to torch.

    import pmdrop
    model = pmdrop.convert(model, "pmdrop")      # every nn.Dropout and F.dropout of the model
    y = pmdrop.dropout(x, p=0.1, variant="pmdrop")

Variants: ``pmdrop.variant_names()``; ``help(pmdrop.dropout)`` says which to pick.
"""

from .accounting import SavedBytes, track_saved_tensors
from .functional import dropout
from .modules import PackedDropout, active_variant, convert, dropout_mode
from .packing import VALID_MASKS_PER_BYTE, pack_mask, packed_numel, unpack_mask
from .routes import use_route
from .saved_masks import PackedSavedMasks, pack_saved_masks
from .variants import (
    DropoutVariant,
    check_runs_on,
    get_variant,
    packed_variant,
    register_variant,
    variant_names,
)

__all__ = [
    "VALID_MASKS_PER_BYTE",
    "DropoutVariant",
    "PackedDropout",
    "PackedSavedMasks",
    "SavedBytes",
    "active_variant",
    "check_runs_on",
    "convert",
    "dropout",
    "dropout_mode",
    "get_variant",
    "pack_mask",
    "pack_saved_masks",
    "packed_numel",
    "packed_variant",
    "register_variant",
    "track_saved_tensors",
    "unpack_mask",
    "use_route",
    "variant_names",
]
__version__ = "0.1.0"
