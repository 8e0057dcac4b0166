"""The standard CIFAR training input (He et al. 2016, Sec. 4.2): each epoch a new shuffle,
every image shifted by up to 4 pixels (zero-padded to 40x40, a random 32x32 crop) and flipped
left-right with probability 1/2. Done per batch with gathers (cheap on a CPU that is also
training); deterministic for a given seed and sequence of epochs."""

from tfquant._keras import tf


def shift_and_flip(images, seed, padding=4):
    """Each image of the batch `images` (B, H, W, C) zero-padded by `padding`, cropped back to
    H x W at a random offset, and flipped left-right with probability 1/2.

    `seed` is a stateless seed (shape (2,) int); the same seed gives the same batch.

    Example:
      >>> batch = tf.reshape(tf.range(16.0), [1, 4, 4, 1])
      >>> out = shift_and_flip(batch, tf.constant([1, 2]), padding=1)
      >>> out.shape.as_list(), float(tf.reduce_sum(tf.cast(out == 0, tf.int32))) <= 7
      ([1, 4, 4, 1], True)
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    offsets = tf.random.stateless_uniform(
        [2, batch], seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32
    )
    rows = offsets[0][:, None] + tf.range(height)[None, :]
    cols = offsets[1][:, None] + tf.range(width)[None, :]
    flip = tf.random.stateless_uniform([batch], seed + 1) < 0.5
    cols = tf.where(flip[:, None], tf.reverse(cols, axis=[1]), cols)
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(cropped, cols, axis=2, batch_dims=1)


def shifted_and_flipped(images, labels, batch_size=128, seed=0, padding=4):
    """A `tf.data.Dataset` of augmented training batches (reshuffled on every iteration).

    Args:
      images: float32 array (N, H, W, C). labels: int array (N,).
      batch_size: images per batch (the last batch may be smaller).
      seed: shuffling and augmentation seed; the same seed gives the same batches.
      padding: the largest shift in pixels.

    Example:
      >>> import numpy as np
      >>> batches = shifted_and_flipped(np.ones((5, 8, 8, 3), "float32"), np.arange(5), 4)
      >>> [tuple(x.shape) for x, _ in batches]
      [(4, 8, 8, 3), (1, 8, 8, 3)]
    """
    data = tf.data.Dataset.from_tensor_slices((images, labels))
    data = data.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    data = tf.data.Dataset.zip((seeds, data)).map(
        lambda s, pair: (shift_and_flip(pair[0], s, padding), pair[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return data.prefetch(tf.data.AUTOTUNE)
