"""Train a UNet on images + instance labels (3 classes: background, interior, boundary [+ distance]).

Images are rescaled so their objects have a canonical diameter (stored in the
model file), then random crops are augmented (:mod:`.augment`) and fitted with
cross-entropy (gaps between touching objects weighted up) + soft Dice
(:mod:`.loop`). Validation segments whole val images exactly as inference does
and scores AP@0.5; the best model is saved, and its post-processing thresholds
are tuned on val (:mod:`.tuning`). Targets are in :mod:`.targets`, samples,
crops and batches in :mod:`.data`; every setting in :mod:`napari_cellunet.settings`.
"""

from ..settings import AugmentConfig, TrainConfig
from .augment import (
                      add_halos,
                      add_noise,
                      add_speckles,
                      add_texture,
                      augment,
                      brightness_field,
                      defocus_objects,
                      dim_objects,
                      paste_objects,
)
from .data import (
                      Sample,
                      batch_stream,
                      load_folder_pairs,
                      make_batch,
                      make_sample,
                      random_crop,
                      rescale_pair,
                      sampling_weights,
)
from .loop import TrainState, WeightAverage, iter_train, loss_fn
from .targets import contact_weights, distance_target, keep_largest_fragment, labels_to_targets, touching_other
from .tuning import threshold_objective, tune_thresholds, val_scores

__all__ = ["AugmentConfig", "Sample", "TrainConfig", "TrainState", "WeightAverage", "add_halos", "add_noise",
           "add_speckles", "add_texture", "augment", "batch_stream", "brightness_field", "contact_weights",
           "defocus_objects", "dim_objects", "distance_target", "iter_train", "keep_largest_fragment",
           "labels_to_targets", "load_folder_pairs", "loss_fn", "make_batch", "make_sample", "paste_objects",
           "random_crop", "rescale_pair", "sampling_weights", "threshold_objective", "touching_other",
           "tune_thresholds",
           "val_scores"]
