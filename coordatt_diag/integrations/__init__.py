"""Mask watches inside training frameworks: a plain loop (`loop`), Ultralytics (`ultralytics`),
Lightning (`lightning`) and TensorBoard output (`tensorboard`). Each framework is imported only by
the module that needs it, when that module is imported."""
