"""Runs PhaseAdaptation under MirroredStrategy on 2 logical CPU devices and checks that every
replica holds the same kernels, masks and centers. Run as a separate process (logical devices
must be configured before TensorFlow initializes them). Prints 'replicas identical: N'."""

import sys

import numpy as np

import tfquant as tfq
from tfquant._keras import quantized_weights, tf
from tfquant.models import datasets, digits_cnn

keras = tfq.keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
(x, y), _ = datasets.load("digits")
x, y = x[:256], y[:256]
with strategy.scope():
    model = digits_cnn(seed=0)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, epochs=2, batch_size=64, verbose=0)
with strategy.scope():
    qmodel = tfq.quantize_model(model, tfq.schemes.Multivalued(bits=2, mode="masked"))
    qmodel.compile(
        keras.optimizers.Adam(5e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
schedule = tfq.callbacks.PhaseAdaptation(epochs_per_phase=1, verbose=0)
qmodel.fit(
    x, y, epochs=schedule.epochs_needed(qmodel), batch_size=64, verbose=0, callbacks=[schedule]
)
checked = 0
for _, kernel, _, state in quantized_weights(qmodel):
    for variable in [kernel, state["frozen_mask"], state["centers"], state["schedule_step"]]:
        values = [v.numpy() for v in variable.values]
        if len(values) != 2:
            sys.exit(f"{variable.name} is not mirrored: {len(values)} values")
        if not np.array_equal(values[0], values[1]):
            sys.exit(f"{variable.name} differs between replicas")
        checked += 1
    if not np.all(np.isin(kernel.numpy(), state["centers"].numpy())):
        sys.exit(f"{kernel.name} has weights off its centers")
print(f"replicas identical: {checked}")
