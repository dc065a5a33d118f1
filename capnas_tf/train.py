"""Entry point: `python -m capnas_tf.train --flagfile=configs/quickstart.cfg`.

Turns flags into typed configs and hands them to `capnas_tf.jobs`; nothing else happens here.
"""
from __future__ import annotations

import sys

# TensorFlow's start-up lines are quietened by the package's import (capnas_tf._startup), before this runs.
from absl import app, logging

from capnas_tf import flags as cflags  # (defines the flags)
from capnas_tf import jobs
from capnas_tf._startup import quiet_runtime
from capnas_tf.checkpointing import UnreadableCheckpointError
from capnas_tf.data.captions_io import BadAnnotationFileError, BadExampleError
from capnas_tf.encoders import EncoderWeightsError
from capnas_tf.retrain import NonFiniteStateError as RetrainNonFiniteStateError
from capnas_tf.search.loop import NonFiniteLossError
from capnas_tf.search_space.genotypes import GenotypeError


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not cflags.FLAGS["verbosity"].present:  # TFDS and checkpointing log every file at INFO
        logging.set_verbosity(logging.WARNING)
    try:  # every setting is checked here, before any data is read or graph traced
        configs = cflags.configs_from_flags()
    except ValueError as error:  # a usage error: `--flag=value: what was expected`, no traceback
        print(cflags.describe_config_error(error), file=sys.stderr)
        return 2
    try:
        with quiet_runtime():
            jobs.run(cflags.FLAGS.mode, **configs)
    except OPERATOR_ERRORS as error:  # each names what to fix; a traceback would bury it
        print(f"Error: {error}", file=sys.stderr)
        return 1


# Errors whose message tells the operator what went wrong and what is kept: another run holds the
# workdir; a bad example or annotation file (named, with the flag that skips it); a bad --genotype; a
# --retrain_encoder_weights file that does not fit the encoder; a checkpoint that cannot be read; a run
# stopped on a non-finite loss or state (the last good checkpoint stays the latest); a multi-worker run
# that lost a worker.
OPERATOR_ERRORS = (jobs.WorkdirLockedError, BadExampleError, BadAnnotationFileError, GenotypeError,
                   EncoderWeightsError, UnreadableCheckpointError, NonFiniteLossError, RetrainNonFiniteStateError,
                   jobs.WorkerLostError)


if __name__ == "__main__":
    cflags.use_sectioned_help()  # --help: the flags above by section; --helpfull: every library's too
    app.run(main)
