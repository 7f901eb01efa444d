"""Re-export of ssml_fast._validation, the package's one validation module (kept so older imports work;
new code imports `from .. import _validation`)."""
from .._validation import (  # noqa: F401
    REDUCTIONS,
    as_label_array,
    check_choice,
    check_embeddings,
    check_int,
    check_labels,
    check_nonnegative,
    check_positive,
    check_real,
    check_same_device,
    check_same_dim,
    check_size,
    check_tensor,
    compute_dtype,
    is_int,
    is_real,
    resolve_reference,
)
