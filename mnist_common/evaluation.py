"""The evaluation CLI both frameworks share: canonical weights in, test metrics out.

Each CLI parses its flags (`parse_args`) before it imports its engine, so `--help` and a bad
flag answer at once, then hands the engine in (`evaluate_weights`), as the training CLIs do.
"""


from mnist_common.config import Config, add_device_flags, cli_name
from mnist_common.errors import ArgumentParser, UsageError, short_path
from mnist_common.ownership import check_out_file


def build_parser(framework):
    """Flags of `python -m <framework>_impl.evaluate`."""
    parser = ArgumentParser(
        prog=cli_name(framework, "evaluate"),
        description=f"Evaluate canonical weights (.safetensors from either framework, or the "
                    f"tutorial's .pt state_dict) with {framework} on all 10,000 test images.")
    parser.add_argument("--weights", required=True, metavar="FILE",
                        help="model.safetensors or a .pt/.pth state_dict (required)")
    add_device_flags(parser, Config())
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="also write the metrics to this JSON file (default: print only)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no status lines while preparing data (shown by default)")
    return parser


def load_state(backend, params, device="auto", precision="highest"):
    """(placement, a train state of `backend` holding canonical `params`)."""
    placement = backend.select_placement(device, precision)
    state = backend.create_train_state(Config(), placement)
    return placement, backend.state_from_arrays(state, params, {})


def parse_args(framework, argv):
    """The flags of `python -m <framework>_impl.evaluate`, checked before any framework loads."""
    args = build_parser(framework).parse_args(argv)
    if args.out:
        check_out_file(args.out, "--out", "an earlier evaluation's output")
    return args


def evaluate_weights(args, backend):
    """Load the weights into `backend` (the engine), evaluate on the test set.

    Returns the metrics dict (also printed, and written to --out when given).
    """
    from mnist_common import data, loaders, reporting
    from mnist_common.weights import load_weights

    framework = backend.FRAMEWORK
    params = load_weights(args.weights)
    placement, state = load_state(backend, params, args.device, args.precision)
    root = data.prepare_data(args.data_dir, progress=args.progress)
    test_split = data.load_arrays(root, train=False)
    # The same batches as the training loop's evaluation.
    test_batches = loaders.EngineBatches(backend, placement, test_split, train=False,
                                         loader=args.loader, root=root)
    evaluation = backend.evaluate(state, test_batches.every_example())
    metrics = {
        "framework": framework,
        "weights": str(args.weights),
        "device": backend.describe_placement(placement),
        "precision": args.precision,
        "versions": backend.versions(),
        "test_loss": evaluation["loss"],
        "test_accuracy": evaluation["accuracy"],
        "test_correct": evaluation["correct"],
        "test_examples": evaluation["examples"],
    }
    if args.out:  # written before the line is printed: a closed stdout cannot lose it
        try:
            reporting.write_metrics(args.out, metrics)
        except OSError as err:
            raise UsageError(f"--out {args.out}: cannot write it ({err.strerror or err})") from None
    print(f"{framework}: {short_path(args.weights)}: test accuracy "
          f"{100 * evaluation['accuracy']:.2f} % ({evaluation['correct']}/"
          f"{evaluation['examples']}), test loss {evaluation['loss']:.4f}")
    return metrics
