"""torchrun for ``nnzip … --nproc N``, quiet when a process fails.

``python -m torch.distributed.run`` answers a failed process with a Python traceback and a
summary of every rank's exit code, after the rank already printed nnzip's one error line. This
launcher runs the same torchrun (:func:`torch.distributed.run.run`, same arguments) and turns
that failure into exit status 2 without the summary or the elastic agent's log lines; the
parent ``nnzip`` prints the rank's error line (:func:`nnzip.core.distributed.first_rank_error`).
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torch's elastic loggers each carry their own level (set when imported): quiet each one.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic") or name == "torch.distributed.run":
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError:
        return 2
    except SignalException as stopped:  # Ctrl-C or SIGTERM: the ranks got it too
        return 128 + int(stopped.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
