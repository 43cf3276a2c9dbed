"""Make this folder's training_steps.npz from the full one that the published code wrote (README, "One
training step of each stage"), small enough to keep in the repository:

- the batch's resized images become the SHA-256 of their bytes (the test re-creates them with this
  project's test transform and compares the hash);
- a stage-2 gradient of more than 32768 values, seen as a matrix G (first axis x the others), becomes
  G s and r G for seeded random sign vectors s and r (float64; plain sums would cancel: a LayerNorm
  after conv1 makes its gradient sum to zero over the output channels), and 4096 of its values at
  seeded positions; every smaller gradient and everything else is kept as it is.

    python tests/data/published_reference/reduce_training_steps.py FULL.npz OUT.npz
"""
import hashlib
import sys

import numpy as np

FULL_GRADIENT_MAX = 32768
SAMPLED_VALUES = 4096


def reduce(full: dict) -> dict:
    out = {}
    for key, value in full.items():
        if key == 'images_resized_uint8':
            out['images_resized_uint8_sha256'] = np.array(hashlib.sha256(value.tobytes()).hexdigest())
        elif key.startswith('stage2_grad/') and value.size > FULL_GRADIENT_MAX:
            name = key[len('stage2_grad/'):]
            matrix = value.reshape(value.shape[0], -1).astype(np.float64)
            rng = np.random.default_rng(0)
            positions = np.sort(rng.choice(value.size, SAMPLED_VALUES, replace=False))
            row_signs, column_signs = (rng.choice(np.array([-1, 1], dtype=np.int8), size) for size in matrix.shape)
            out[f'stage2_grad_row_signs/{name}'] = row_signs
            out[f'stage2_grad_column_signs/{name}'] = column_signs
            out[f'stage2_grad_times_column_signs/{name}'] = matrix @ column_signs
            out[f'stage2_grad_row_signs_times/{name}'] = row_signs @ matrix
            out[f'stage2_grad_sample_positions/{name}'] = positions.astype(np.int64)
            out[f'stage2_grad_sample/{name}'] = value.reshape(-1)[positions]
        else:
            out[key] = value
    return out


if __name__ == '__main__':
    source, target = sys.argv[1:3]
    np.savez_compressed(target, **reduce(dict(np.load(source, allow_pickle=False))))
