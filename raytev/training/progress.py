"""The driver's training progress bar, fed by rank 0 through a Ray queue: one bar, wherever the workers run.

Workers' own output stays in Ray's logs (see raytev.cluster.connect); a bar drawn inside a worker would be
relayed and redrawn by Ray on every later line the driver prints.
"""

from __future__ import annotations

import queue as local_queue
import threading

from raytev.progress import progress_bar


class TrainingProgress:
    """A context: `queue` takes {"step": n[, "loss": x]} from rank 0; a thread moves the bar to match."""

    def __init__(self, total_steps: int, initial_step: int = 0):
        self.total_steps, self.initial_step = total_steps, initial_step
        self.queue = None
        self._stop = threading.Event()

    def __enter__(self) -> TrainingProgress:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # The queue's actor takes no CPU: it must not wait for one behind the training workers. It lives on the
        # driver's node (as Ray Train's controller does): on a worker node it would die with that node.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.bar = progress_bar(total=self.total_steps, initial=self.initial_step, desc="Training", unit=" steps")
        self._thread = threading.Thread(target=self._follow, daemon=True, name="raytev-training-progress")
        self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._show(self.queue.get(timeout=0.5))
            except local_queue.Empty:
                continue
            except Exception:  # the queue's actor went away with the cluster: nothing more to show
                return

    def _show(self, update: dict) -> None:
        self.bar.update(update["step"] - self.bar.n)
        if "loss" in update:
            self.bar.set_postfix(loss=f"{update['loss']:.4f}", refresh=False)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            while not self.queue.empty():
                self._show(self.queue.get_nowait())
        except Exception:
            pass
        self.bar.close()
        from ray import kill

        try:
            kill(self.queue.actor)
        except Exception:
            pass
