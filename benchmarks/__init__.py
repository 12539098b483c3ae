"""Side-by-side speed of the tutorial MNIST CNN in PyTorch and in Flax, timed on the engines the
CLIs run (`torch_impl.backend`, `flax_impl.backend`). Entry point: `python benchmarks/run.py`
(`benchmarks.cli.main`); one module per job:

- `timing`: first calls, interleaved windows, synchronisation, other processes' load;
- `environment`: the devices (each engine's placement), machine, versions, memory;
- `variants`: torch eager / channels_last / compile and Flax jit / stock conv, on the engines;
- `flops`: FLOPs per image from `mnist_common.architecture`;
- `measure`: peak GEMM, train step and logits per batch size; `layers`: each layer alone;
- `end_to_end`: one epoch through the CLIs' loop, and the CLIs as processes (`--cli`);
- `accuracy`: time to 98.5 % test accuracy; `session`: one device, start to end;
- `report`: Markdown; `plot`: PNG and the files on disk; `cli`: the command line.
"""

PROG = "benchmarks/run.py"
