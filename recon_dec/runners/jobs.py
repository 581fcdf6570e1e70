"""Independent jobs (a plan's training, an LR probe, an evaluation) run in
up to N worker processes at once, each with one BLAS thread; their results
come back in the order the jobs were given, whatever order they finish in
(``run``). A ``Pool`` takes jobs one by one and waits for some of them
while the others run, for work that depends on earlier results.

N = 1 runs the jobs one after another in this process, exactly as a plain
loop would. For N > 1 every job runs in a forked child process:

- its stdout / stderr lines are prefixed with ``[job name]``, and it sees no
  terminal (progress bars stay off);
- Caffe and OpenBLAS run one CPU thread in it (OPENBLAS_NUM_THREADS=1, also
  for the ``caffe`` processes it starts): N jobs then use N cores without
  the threads of one fighting the others';
- it is in its own process group, so a terminal's Ctrl-C reaches only this
  process, which passes one SIGINT to every running job (``caffe train``
  then snapshots and stops, as ``recon-dec train`` does on Ctrl-C) and waits
  for them; it also gets SIGINT if this process dies;
- the first job to fail stops the others the same way; the jobs not yet
  started never start, and the job's own one-line error is raised here.

Caffe's results depend on its CPU thread count (weight gradients are summed
per thread): a caller that wants the same numbers for every N sets one
thread for N = 1 too (``single_blas_thread``)."""
import ctypes
import os
import pickle
import signal
import sys
import traceback
from collections import deque
from dataclasses import dataclass, field

from ..errors import ReconDecError

PR_SET_PDEATHSIG = 1


@dataclass
class Job:
    """``fn(*args, **kwargs)`` under the name ``name`` (log prefix, errors).
    For N > 1 its result must pickle (``fn`` and its arguments reach the
    worker by fork: they need not)."""
    name: str
    fn: object
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def usable_cores():
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def single_blas_thread():
    """One CPU thread for Caffe and OpenBLAS from now on, in this process and
    the processes it starts: the environment variable for those not started
    yet (Caffe reads its thread count from OpenBLAS, once), and for libraries
    loaded here already (pycaffe) openblas_set_num_threads and Caffe's own
    caffe_set_cpu_threads (patch 0006: its pool has kept the count it read)."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    for names, setter_name in ((("libopenblas.so.0", "libopenblas.so"), "openblas_set_num_threads"),
                               (("libcaffe.so.1.0.0",), "caffe_set_cpu_threads")):
        for name in names:
            try:  # RTLD_NOLOAD: only a library that is loaded already, never load one
                lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            except OSError:
                continue
            setter = getattr(lib, setter_name, None)
            if setter is not None:
                setter(1)
            break


def run(jobs, n=None):
    """Runs ``jobs`` (a list of Job), at most ``n`` at once (default: the
    usable cores); returns their results in the same order."""
    with Pool(n) as pool:
        return pool.wait([pool.submit(j) for j in jobs])


# --------------------------------------------------------------------------
class _Prefixed:
    """A text stream that starts every line written to ``stream`` with
    ``prefix``, and says it is no terminal (no progress bars)."""

    def __init__(self, stream, prefix):
        self.stream, self.prefix, self.at_start = stream, prefix, True

    def write(self, text):
        out = []
        for part in text.splitlines(keepends=True):
            if self.at_start:
                out.append(self.prefix)
            out.append(part)
            self.at_start = part.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return False

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _child(job, conn):
    """Body of a worker process: run the job, send ("ok", result),
    ("interrupted", message) or ("error", exception) and exit."""
    os.setpgrp()  # the terminal's Ctrl-C goes to the parent, which forwards it once
    try:  # SIGINT (stop cleanly) when the parent dies
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGINT))
    except Exception:
        pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    prefix = f"[{job.name}] "
    sys.stdout = _Prefixed(sys.stdout, prefix)
    sys.stderr = _Prefixed(sys.stderr, prefix)
    single_blas_thread()
    try:
        msg = ("ok", job.fn(*job.args, **job.kwargs))
    except KeyboardInterrupt as e:
        msg = ("interrupted", str(e))
    except BaseException as e:  # everything goes back to the parent
        e.add_note("".join(traceback.format_exception(e)))  # shown with RECON_DEC_DEBUG=1
        msg = ("error", e)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late second stop must not break the reply
    try:
        if msg[0] == "error":  # some exceptions pickle but do not unpickle (other __init__)
            pickle.loads(pickle.dumps(msg))
        conn.send(msg)
    except Exception as e:  # a result or an exception that does not pickle
        what = "result" if msg[0] == "ok" else f"error ({type(msg[1]).__name__}: {msg[1]})"
        conn.send(("error", RuntimeError(f"{job.name}: the job's {what} could not be sent back: "
                                         f"{type(e).__name__}: {e}")))
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()


class Pool:
    """Jobs submitted one by one and started in that order, up to ``n`` at
    once; ``wait`` returns the results of some of them while the others
    keep the cores busy, so a caller can submit work that depends on
    earlier results as soon as those are in. Use it as a context manager:
    leaving the block by an exception (Ctrl-C included) stops every running
    job (SIGINT, waiting for them); leaving it normally waits for every job.
    ``n`` = 1: each job runs in this process when submitted."""

    def __init__(self, n=None):
        import multiprocessing
        self.n = usable_cores() if n is None else int(n)
        if self.n < 1:
            raise ValueError(f"jobs: n must be >= 1, got {self.n}")
        self.ctx = multiprocessing.get_context("fork")
        self.jobs, self.results, self.done = [], [], set()
        self.todo = deque()
        self.running = {}  # job id -> (process, connection)
        self.failure = None  # the exception of the first job that failed
        self.interrupted = None  # message of an interruption

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.wait(range(len(self.jobs)))
        else:
            self.stop()
        return False

    def submit(self, job):
        """Queues ``job``; returns its id (for ``wait``)."""
        i = len(self.jobs)
        self.jobs.append(job)
        self.results.append(None)
        if self.n == 1:
            self.results[i] = job.fn(*job.args, **job.kwargs)
            self.done.add(i)
        else:
            self.todo.append(i)
            self._fill()
        return i

    def wait(self, ids):
        """The results of the jobs ``ids``, in that order, once all are in;
        raises the first error of any job (after stopping the others)."""
        from multiprocessing.connection import wait
        ids = list(ids)
        try:
            while not self._stopping() and not all(i in self.done for i in ids):
                self._fill()
                ready = wait([c for _, c in self.running.values()] +
                             [p.sentinel for p, _ in self.running.values()])
                for i, (p, c) in list(self.running.items()):
                    if c in ready or p.sentinel in ready:
                        self._finish(i, p, c)
        except KeyboardInterrupt:
            self.interrupted = self.interrupted or "interrupted"
        if self._stopping():
            self.stop()
            if self.failure is not None:
                raise self.failure
            raise KeyboardInterrupt(self.interrupted)
        return [self.results[i] for i in ids]

    def stop(self):
        """Stops every running job (SIGINT: caffe snapshots, pycaffe raises
        KeyboardInterrupt) and waits for them; queued jobs never start."""
        self.todo.clear()
        self.interrupted = self.interrupted or "stopped"
        self._stop_all()
        self._drain()

    def _stopping(self):
        return self.failure is not None or self.interrupted is not None

    def _fill(self):
        while self.todo and len(self.running) < self.n and not self._stopping():
            self._start(self.todo.popleft())

    def _start(self, i):
        reader, writer = self.ctx.Pipe(duplex=False)
        sys.stdout.flush()
        sys.stderr.flush()
        p = self.ctx.Process(target=_child, args=(self.jobs[i], writer), name=self.jobs[i].name, daemon=False)
        p.start()
        writer.close()  # the child holds the only writer: EOF when it exits
        self.running[i] = (p, reader)

    def _finish(self, i, p, c):
        """Collects job ``i``'s reply (or its death) and records it."""
        try:
            kind, value = c.recv()
        except (EOFError, OSError):
            p.join()
            code = p.exitcode
            how = (f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit status {code}")
            kind, value = "error", ReconDecError(f"{self.jobs[i].name}: the worker process died ({how})")
        c.close()
        p.join()
        del self.running[i]
        if kind == "ok":
            self.results[i] = value
            self.done.add(i)
            return
        if kind == "interrupted":
            if value:  # where the job stopped (e.g. "stage 4 stopped at iteration 120; rerun to resume")
                print(f"[{self.jobs[i].name}] {value}", file=sys.stderr, flush=True)
            if not self._stopping():  # stopped from outside, not by us
                self.interrupted = f"{self.jobs[i].name}: {value or 'interrupted'}"
                self._stop_all()
            return
        if not self._stopping():
            self.failure = value
            self._stop_all()

    def _stop_all(self):
        """Asks every running job to stop; their replies are still collected."""
        for p, _ in self.running.values():
            try:
                os.kill(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def _drain(self):
        """Waits for every running job after a stop, ignoring further Ctrl-C."""
        from multiprocessing.connection import wait
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self.running:
                ready = wait([c for _, c in self.running.values()] +
                             [p.sentinel for p, _ in self.running.values()])
                for i, (p, c) in list(self.running.items()):
                    if c in ready or p.sentinel in ready:
                        self._finish(i, p, c)
        finally:
            signal.signal(signal.SIGINT, old)
