"""Diagnostic and real-data tasks, one file each, registered by name.

``create_task("mqar", num_kv_pairs=8)``, ``available_tasks()``; see ``rnnlab.tasks.base``
for the batch contract and ``rnnlab.tasks.metrics`` for the metrics (scored positions only).
"""
import importlib
import pkgutil

from rnnlab.tasks.base import (IGNORE_INDEX, Batch, Task, available_tasks, create_task, register_task, task_info,
                               task_options)

__all__ = ["IGNORE_INDEX", "Batch", "Task", "available_tasks", "create_task", "register_task", "task_info", "task_options"]

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("base", "metrics"):
        importlib.import_module(f"{__name__}.{_m.name}")
