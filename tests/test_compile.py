"""torch.compile(model, fullgraph=True): no graph breaks, eager outputs, one graph per capacity value.

Graph breaks and recompiles are Dynamo's business, the same for every backend, so those checks use the cheap
``eager`` backend; inductor (the default backend, C++ code generation on CPU) is compiled once, for outputs.
"""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from mone.models import create_model

pytestmark = pytest.mark.slow  # about 100 s on 2 cores, most of it inductor's C++ build


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_one_graph_per_capacity_and_no_graph_breaks():
    torch.manual_seed(0)
    model = create_model("mone_vit_test").eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    images = torch.randn(2, 3, 32, 32)
    seen = set()
    with torch.no_grad():
        for capacity in (0.5, 0.5, 0.25, 0.5, 1.0, 0.25, (0.25, 0.25, 0.25, 0.25)):
            torch.testing.assert_close(compiled(images, capacity=capacity), model(images, capacity=capacity))
            seen.add(capacity)
            assert counters["stats"]["unique_graphs"] == len(seen)  # a graph per distinct capacity, no more
        compiled(torch.randn(2, 3, 32, 32), capacity=0.5)  # new data, same capacity: no recompile
    assert counters["stats"]["unique_graphs"] == len(seen)
    assert not counters["graph_break"]


def test_inductor_matches_eager():
    torch.manual_seed(1)
    model = create_model("mone_vit_test", depth=1).eval()
    compiled = torch.compile(model, fullgraph=True)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images, capacity=0.3), model(images, capacity=0.3), rtol=1e-5, atol=1e-5)


def test_compiled_training_step_matches_eager_gradients():
    torch.manual_seed(2)
    model = create_model("mone_vit_test")
    with torch.no_grad():
        model.alpha.fill_(0.3)  # open the router's gradient path
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # traces the backward graph too
    images = torch.randn(2, 3, 32, 32)

    def grads(module):
        model.zero_grad(set_to_none=True)
        module(images, capacity=0.5).square().mean().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    eager, fast = grads(model), grads(compiled)
    assert eager.keys() == fast.keys()
    for name in eager:
        torch.testing.assert_close(fast[name], eager[name], rtol=1e-5, atol=1e-6, msg=name)
    assert eager["router.weight"].abs().sum() > 0 and eager["alpha"].abs() > 0
