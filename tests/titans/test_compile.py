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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.titans.helpers import MEMORY_VARIANTS, VARIANTS

ROOT = Path(__file__).resolve().parents[2]


#: The probes this module runs, each in its own process. All of them start together when the
#: module's first test asks for one (tracing and compiling are mostly single-threaded Python:
#: on a 2-core machine two at a time take about half the wall time of one after another).
PROBES = {
    "breaks": ("breaks",),
    "equal": ("equal", ",".join(MEMORY_VARIANTS)),
    "memorize": ("memorize", "3"),
    "blocks": ("blocks", "aot_eager"),
}


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.titans.compile_probe", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


class _Probes:
    """The running probes; :meth:`result` waits for one and reads its JSON line."""

    def __init__(self) -> None:
        self.running = {name: _start(*args) for name, args in PROBES.items()}
        self.results: dict[str, dict] = {}

    def result(self, name: str) -> dict:
        if name not in self.results:
            out, err = self.running[name].communicate(timeout=1200)
            assert self.running[name].returncode == 0, err[-3000:]
            self.results[name] = json.loads(out.strip().splitlines()[-1])
        return self.results[name]

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def probes() -> Iterator[_Probes]:
    running = _Probes()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def graph_breaks(probes: _Probes) -> dict:
    return probes.result("breaks")


@pytest.fixture(scope="module")
def compiled(probes: _Probes) -> dict:
    return probes.result("equal")


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


def test_compiled_memorize_equals_the_token_loop(probes: _Probes) -> None:
    # Hypothesis inside the probe (3 derandomized examples: each compiles anew): sizes from one
    # token to several chunks with a partial last chunk, chunk sizes 1/3/4, linear and MLP
    # memories, forgetting towards W_0 and towards zero; outputs and every gradient, float64.
    assert probes.result("memorize")["failures"] == []


def test_compiled_blocks_equal_the_eager_layer(probes: _Probes) -> None:
    # NeuralMemory(compile_blocks=...): the hand-written block alone under torch.compile, one
    # graph per block shape; outputs, streamed state and all 15 parameters' gradients, float64.
    found = probes.result("blocks")
    assert found["grads"] == 15
    assert found["y"] <= 1e-12 and found["state"] <= 1e-12 and found["grad"] <= 1e-10
