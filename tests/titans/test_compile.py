"""``torch.compile`` traces every model variant and the memory layer as one graph, and the
compiled model equals the eager one, outputs and gradients.

The hand-written block of the MLP-family and linear memories with the squared error (the
defaults) is one autograd function whose backward dynamo traces as well; the value checks on
token ids are skipped while compiling (they would read tensors on the host). ``aot_eager``
runs dynamo and AOTAutograd, the parts that decide graph breaks and the traced backward,
without a C++ compiler; ``fullgraph=True`` makes any graph break an error.

The work runs in a fresh process (``compile_probe.py``): the suite's runtime shape checks wrap
every annotated function in a checker that dynamo cannot trace, and a user's model has none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.titans.helpers import MEMORY_VARIANTS, VARIANTS

ROOT = Path(__file__).resolve().parents[2]


def probe(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="2")
    done = subprocess.run(
        [sys.executable, "-m", "tests.titans.compile_probe", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def graph_breaks() -> dict:
    return probe("breaks")


@pytest.fixture(scope="module")
def compiled() -> dict:
    return probe("equal", ",".join(MEMORY_VARIANTS))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_traces_without_graph_breaks(graph_breaks: dict, variant: str) -> None:
    assert graph_breaks[variant] == []


@pytest.mark.parametrize("memory", ["mlp", "linear"])
@pytest.mark.parametrize("seq", [16, 13, 3])  # whole chunks; a partial last chunk; less than one chunk
def test_memory_layer_traces_without_graph_breaks(graph_breaks: dict, memory: str, seq: int) -> None:
    assert graph_breaks[f"layer-{memory}-{seq}"] == []


@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
def test_compiled_model_equals_eager(compiled: dict, variant: str) -> None:
    found = compiled[variant]
    assert found["finite"]
    assert found["grad_names_equal"] and found["grads"] > 10
    # float64 throughout: the same operations in the same order, up to reassociation
    assert found["logits"] <= 1e-12 and found["loss"] <= 1e-12
    assert found["grad"] <= 1e-10


def test_compiled_model_continues_an_eager_stream(compiled: dict) -> None:
    # An eager piece's state continues under the compiled model (a piece that starts inside a
    # memory chunk takes the general path, graph breaks allowed), equal to the eager stream.
    assert compiled["stream"] <= 1e-12


def test_compiled_memorize_equals_the_token_loop() -> None:
    # Hypothesis inside the probe (3 derandomized examples: each compiles anew): sizes from one
    # token to several chunks with a partial last chunk, chunk sizes 1/3/4, linear and MLP
    # memories, forgetting towards W_0 and towards zero; outputs and every gradient, float64.
    assert probe("memorize", "3")["failures"] == []


def test_compiled_blocks_equal_the_eager_layer() -> None:
    # NeuralMemory(compile_blocks=...): the hand-written block alone under torch.compile, one
    # graph per block shape; outputs, streamed state and all 15 parameters' gradients, float64.
    found = probe("blocks", "aot_eager")
    assert found["grads"] == 15
    assert found["y"] <= 1e-12 and found["state"] <= 1e-12 and found["grad"] <= 1e-10
