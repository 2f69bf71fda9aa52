"""Stage kernels started ahead of their stage.

Starting a stage's kernel and importing the library (torch, ONNX Runtime, matplotlib) takes
3 to 5 s on 2 cores, and a default book runs 25 stages. While a stage whose figures are not
timings runs (:attr:`~zoobook.stages.spec.StageIO.timed` is False), :func:`zoobook.runner.run_model`
starts the next stage's kernel beside it (:class:`WarmKernel`) and has it import the library;
the next stage's notebook then runs in that kernel, handed to papermill as its kernel
manager. After the stage the kernel is asked to exit (:meth:`WarmKernel.stop`) and reaped
later (:meth:`WarmKernel.reap`), so that the next stage need not wait for torch's teardown
(about 1.5 s, measured in stop 29).

The kernel is the one papermill would have started: the same kernel spec, working folder,
environment and arguments. Nothing runs in it before the notebook but the imports, sent
silently (no history, no execution count: the notebook's first cell is still number 1).
A warm kernel is used only by the stage it was started for and only where nothing about it
changed (:meth:`WarmKernel.fits`); otherwise, or when its process has died, it is shut down
and papermill starts a fresh kernel as before. Beside a timed stage nothing is started, and
before one the runner waits until every kernel has finished its imports
(:meth:`WarmKernel.settle`) and every kernel asked to exit is gone, so that its speeds are
measured on a quiet machine.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the arguments the runner gives papermill for every stage's kernel
KERNEL_ARGUMENTS = ("--log-level=CRITICAL",)
#: what nbclient adds when it starts an IPython kernel itself (its ``ipython_hist_file`` default)
NBCLIENT_ARGUMENTS = ("--HistoryManager.hist_file=:memory:",)


def warm_imports(model: str) -> str:
    """The code a warm kernel runs first: the modules the stage notebooks of ``model`` import,
    imported into a namespace of its own, so that the notebook finds no name it did not bind."""
    modules = ("zoobook.plots", "zoobook.records", "zoobook.stages.steps", "zoobook.tables", f"zoobook.models.{model}")
    return f"exec({'import ' + ', '.join(modules)!r}, {{}})"


class WarmKernel:
    """A kernel started now for a stage that runs later, importing ``code`` meanwhile."""

    def __init__(self, kernel_name: str, cwd: str | Path, env: dict[str, str], code: str) -> None:
        from jupyter_core.utils import run_sync

        self.kernel_name, self.cwd, self.env = kernel_name, str(cwd), dict(env)
        self._clients: list = []
        self.km = _manager(kernel_name, self._clients)
        arguments = [*KERNEL_ARGUMENTS, *NBCLIENT_ARGUMENTS]
        run_sync(self.km.start_kernel)(cwd=self.cwd, env=self.env, extra_arguments=arguments)
        # sent now and run as soon as the kernel listens; the stage's client, which asks the
        # kernel whether it is ready, is answered after the imports
        self._client = self.km.blocking_client()
        self._client.start_channels()
        self._imports: str | None = self._client.execute(code, silent=True, store_history=False)
        self._stopping = self._reaped = False

    def fits(self, kernel_name: str, cwd: str | Path, env: dict[str, str]) -> bool:
        """Whether this kernel is the one papermill would start now, and still alive."""
        from jupyter_core.utils import run_sync

        same = (kernel_name, str(cwd), dict(env)) == (self.kernel_name, self.cwd, self.env)
        return same and bool(run_sync(self.km.is_alive)())

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until the kernel has run the imports (at most ``timeout`` seconds): from then on
        it sits idle until its stage, so that a timed stage run meanwhile has the CPU to itself."""
        import queue

        while self._imports is not None:
            try:
                reply = self._client.get_shell_msg(timeout=timeout)
            except queue.Empty:
                break  # not answering: papermill will find out
            if reply.get("parent_header", {}).get("msg_id") == self._imports:
                break
        self._imports = None

    def stop(self) -> None:
        """Close the connections and ask the kernel to exit, without waiting for it: the
        interpreter's teardown (see the module's docstring) is time the next stage can use.
        :meth:`reap` then waits for it to be gone."""
        from jupyter_core.utils import run_sync

        if self._stopping or self._reaped:
            return
        for client in (self._client, *self._clients):
            client.stop_channels()
        self._stopping = True
        if run_sync(self.km.is_alive)():  # as the manager's own shutdown: interrupted first, in case
            self.km.shutting_down = True  # a stage stopped by Ctrl-C left a cell running
            run_sync(self.km.interrupt_kernel)()
            run_sync(self.km.request_shutdown)()

    def reap(self) -> None:
        """Wait for the kernel :meth:`stop` asked to exit (killed if it has not within the
        manager's shutdown wait, as papermill's kernels are) and free what it held."""
        from jupyter_core.utils import run_sync

        if self._reaped:
            return
        self.stop()
        self._reaped = True
        try:
            if run_sync(self.km.is_alive)():
                run_sync(self.km.finish_shutdown)()
        finally:
            run_sync(self.km.cleanup_resources)()

    def shutdown(self) -> None:
        """Stop the kernel and wait until it is gone (as papermill does after a notebook)."""
        self.stop()
        self.reap()


def _manager(kernel_name: str, clients: list):
    """An ``AsyncKernelManager`` that keeps in ``clients`` the clients it makes: nbclient does
    not close the one it makes for a kernel manager it was handed (13 file descriptors a
    stage, measured), so :meth:`WarmKernel.shutdown` does."""
    from jupyter_client.manager import AsyncKernelManager

    class Manager(AsyncKernelManager):
        def client(self, **kwargs):
            made = super().client(**kwargs)
            clients.append(made)
            return made

    return Manager(kernel_name=kernel_name)


def kernel_env() -> dict[str, str]:
    """The environment a stage's kernel starts with: the runner's, without progress bars."""
    return {**os.environ, "TQDM_DISABLE": "1"}
