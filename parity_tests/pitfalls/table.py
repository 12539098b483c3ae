"""The Markdown table of `python -m parity_tests.pitfalls`, sorted by what a porter notices."""


HEADER = ("| # | mistake | shows first | logits max \\|Δ\\| | step 1: loss, grads (rel.) "
          "| \\|Δw\\| after 10 steps: max | after 100: median, max | accuracy, 1 epoch "
          "| images ≠ torch | parity tests failing | done right |")


# Where a porter comparing the two sides step by step meets each failing check: the order of
# a port's own checks, from loading the weights to a trained model.
FIRST_SEEN = (("logits", "logits"), ("loss_and_gradients", "step 1: loss, gradients"),
              ("adam_formula", "optimizer"), ("adam_six_steps", "optimizer"),
              ("batches", "batches"), ("initial_draws", "initial draws"),
              ("first_10_steps", "10 steps"), ("100_steps", "100 steps"),
              ("one_epoch_accuracy", "epoch"), ("one_epoch_predictions", "epoch"))


def shows_first(row):
    """The first failing check in FIRST_SEEN's order (a load error before all)."""
    if "load_error" in row:
        return f"load: `{row['load_error'].split(':')[0]}`"
    for check, where in FIRST_SEEN:
        if check in row["failing_checks"]:
            return where
    return "nowhere"


def outside_noise(row, noise):
    """Whether the epoch's accuracy or predictions leave torch's own noise (test_accuracy's
    bounds: gap 0.2 points, images 2x the noise floor's)."""
    gap = abs(row["accuracy"] - row["torch_accuracy"])
    return gap > 0.002 or row["differ_from_torch"] > 2 * noise["differ_from_torch"]


def noticed(row, noise):
    """Sort key: a load error first, then accuracy lost, then the quiet ones."""
    if "load_error" in row or "measurement_failed" in row:
        return (0, 0)
    if row["own_initial_weights"]:
        return (3, 0)
    return (1 if outside_noise(row, noise) else 2, row["accuracy"])


def _g(value):
    return f"{value:.2g}"


def line(number, row):
    """One row of the table."""
    if "measurement_failed" in row:
        return f"| {number} | `{row['name']}` | not measured: {row['measurement_failed']} |"
    tests = ", ".join(f"`{t.split('::')[1]}`" for t in row["failing_tests"]) or "none"
    head = f"| {number} | `{row['name']}`: {row['what']} | {shows_first(row)} |"
    if "load_error" in row:
        error = row["load_error"].split(" (https://")[0]
        return f"{head} {error} | | | | | | {tests} | {row['done_right']} |"
    own = " (own init)" if row["own_initial_weights"] else ""
    step1 = f"{_g(row['loss_1_rel'])}, {_g(row['grads_1_rel'])}" if "loss_1_rel" in row else ""
    return (f"{head} {_g(row['logits_max_abs'])} | {step1} | {_g(row['weights_10_max_abs'])} "
            f"| {_g(row['weights_100_median'])}, {_g(row['weights_100_max_abs'])} "
            f"| {100 * row['accuracy']:.2f} %{own} | {row['differ_from_torch']} | {tests} "
            f"| {row.get('done_right', '')} |")


def markdown(record):
    """The table's lines, with the run's date, machine, commit and command."""
    noise, rows = record["noise"], record["rows"]
    lines = [f"{record['date']}, {record['machine']}, commit {record['commit']}, "
             f"`{record['command']}` ({record['seconds']} s). The shipped torch engine after one "
             f"epoch: {100 * noise['torch_accuracy']:.2f} %.", "",
             HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    noise_row = {**noise, "failing_tests": [], "own_initial_weights": False,
                 "loss_1_rel": 0.0, "grads_1_rel": 0.0, "failing_checks": {}}
    lines.append(line(0, noise_row).replace("| 0 |", "| noise |", 1))
    shipped = [row for row in rows if row["name"] == "shipped"]
    ordered = shipped + sorted((r for r in rows if r["name"] != "shipped"),
                               key=lambda r: noticed(r, noise))
    lines += [line(n, row) for n, row in enumerate(ordered)]
    return lines
