"""`python -m salt_jax.prepare` whose store tasks block, for the kill -9 and Ctrl-C drills (test_store.py).

    python tests/blocking_prepare.py [prepare's flags]

Each task writes a file named by its worker's pid into $SALT_TEST_MARKERS (so the test knows the workers
exist and are inside a task), then sleeps for ten minutes: a build that waited for its tasks would hang,
one that leaves its workers behind would leave these pids alive. The spawned workers import this file as
their main module, so they run the blocking task too.
"""

import os
import sys
import time

from salt_jax.data import shard_writer


def blocking_task(*args):
    with open(os.path.join(os.environ["SALT_TEST_MARKERS"], str(os.getpid())), "w"):
        pass
    time.sleep(600)


if __name__ == "__main__":
    shard_writer.write_task = blocking_task
    from salt_jax import prepare

    sys.argv = ["salt-prepare", *sys.argv[1:]]
    prepare.main()
