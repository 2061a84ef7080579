"""Whole networks: each layer against its rule on what flows through the model, and the wiring between them."""
import json
import re
import textwrap

import pytest
from click.testing import CliRunner

from derivcheck.cli import main

from bindings import BROKEN_NETWORKS, EXAMPLES

NETWORKS = EXAMPLES / "networks"


def verify(*args):
    result = CliRunner().invoke(main, ["verify", *map(str, args), "--format", "json"])
    data = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result, data


def failing(data):
    return sorted(c["name"] for c in data["checks"] if not c["passed"])


@pytest.mark.parametrize("target", ["dlfs1_net.py:TwoLayerNet", "dlfs2_net.py:TwoLayerNet", "dezero_net.py:TwoLayerNet"])
def test_the_example_networks_verify_layer_by_layer(target):
    result, data = verify(NETWORKS / target, "--trials", "3")
    assert result.exit_code == 0, result.output[-2000:]
    assert data["rule"] == "network" and data["verdict"] == "pass"
    names = {c["name"] for c in data["checks"]}
    assert "network gradients" in names and any(n.endswith(": grad W") for n in names)
    assert any(n.startswith("network: ") and "affine" in n for n in data["notes"])


@pytest.mark.parametrize("target,caught,kind", BROKEN_NETWORKS, ids=[b[0].rpartition("/")[2] for b in BROKEN_NETWORKS])
def test_each_broken_network_fails_where_the_catalogue_says(target, caught, kind):
    result, data = verify(EXAMPLES / target, "--trials", "3")
    assert result.exit_code == 1, result.output[-2000:]
    assert failing(data) == sorted(caught)
    if kind:
        assert kind in {d["kind"] for d in data["diagnosis"]}


def test_a_wrong_layer_is_named_first_and_only_the_spoiled_parameters_listed():
    result, data = verify(NETWORKS / "broken" / "wrong_layer.py:TwoLayerNet")
    assert data["notes"][0] == "first layer that disagrees with its rule: Affine1: grad W (layers in forward order)"
    grads = next(c for c in data["checks"] if c["name"] == "network gradients")
    assert re.findall(r"params\['(\w+)'\]", grads["message"]) == ["W1", "W2"]  # not the biases
    assert {d["kind"] for d in data["diagnosis"]} == {"constant-factor"}
    assert all(d["message"].startswith("Affine") for d in data["diagnosis"])


def test_a_layer_wrong_in_its_dx_spoils_every_parameter_before_it(tmp_path):
    result, data = verify(net(tmp_path, relu_backward="return dout  # BUG: the mask is not applied"))
    assert result.exit_code == 1
    assert failing(data) == ["Relu1: grad x", "network gradients"]
    grads = next(c for c in data["checks"] if c["name"] == "network gradients")
    assert re.findall(r"params\['(\w+)'\]", grads["message"]) == ["W1", "b1"]


NET_TEMPLATE = textwrap.dedent('''
    from collections import OrderedDict
    import numpy as np

    class Affine:
        def __init__(self, W, b):
            self.W, self.b = W, b
        def forward(self, x):
            self.x = x
            return x @ self.W + self.b
        def backward(self, dout):
            self.dW, self.db = self.x.T @ dout, dout.sum(axis=0)
            return dout @ self.W.T

    class Relu:
        def forward(self, x):
            self.mask = x <= 0
            return np.where(self.mask, 0.0, x)
        def backward(self, dout):
            {relu_backward}

    class SoftmaxWithLoss:
        def forward(self, x, t):
            e = np.exp(x - x.max(axis=1, keepdims=True))
            self.y, self.t = e / e.sum(axis=1, keepdims=True), t
            return -np.log(self.y[np.arange(len(t)), t]).mean()
        def backward(self, dout=1):
            dx = self.y.copy()
            dx[np.arange(len(self.t)), self.t] -= 1
            return dx * dout / len(self.t)

    class {extra_class}:
        def __init__(self):
            pass
        def forward(self, x):
            return x
        def backward(self, dout):
            return dout

    class TwoLayerNet:
        def __init__(self, input_size, hidden_size, output_size):
            self.params = {{"W1": np.random.randn(input_size, hidden_size), "b1": np.zeros(hidden_size),
                           "W2": np.random.randn(hidden_size, output_size), "b2": np.zeros(output_size)}}
            self.layers = OrderedDict()
            self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
            self.layers["Relu1"] = Relu()
            {extra_layer}
            self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
            self.lastLayer = SoftmaxWithLoss()
        def predict(self, x):
            for layer in self.layers.values():
                x = {apply}
            return x
        def loss(self, x, t):
            return {loss}
        def gradient(self, x, t):
            self.loss(x, t)
            dout = self.lastLayer.backward(1)
            for layer in reversed(list(self.layers.values())):
                dout = layer.backward(dout)
            return {{"W1": self.layers["Affine1"].dW, "b1": self.layers["Affine1"].db,
                    "W2": self.layers["Affine2"].dW, "b2": self.layers["Affine2"].db}}
''')
_DEFAULTS = dict(relu_backward="return np.where(self.mask, 0.0, dout)", extra_class="Unused", extra_layer="",
                 apply="layer.forward(x)", loss="self.lastLayer.forward(self.predict(x), t)")


def net(tmp_path, **changes):
    (tmp_path / "net.py").write_text(NET_TEMPLATE.format(**{**_DEFAULTS, **changes}))
    return tmp_path / "net.py:TwoLayerNet"


def test_a_correct_hand_written_network_passes(tmp_path):
    result, data = verify(net(tmp_path))
    assert result.exit_code == 0, result.output[-2000:]


def test_something_between_two_layers_is_a_wiring_mistake(tmp_path):
    result, data = verify(net(tmp_path, apply="layer.forward(x) * 1.5  # BUG: a stray scale"))
    assert result.exit_code == 1
    assert failing(data) == ["network gradients", "wiring"]
    wiring = next(c for c in data["checks"] if c["name"] == "wiring")
    assert "Relu1's input is not Affine1's output" in wiring["message"]


def test_a_loss_that_is_not_the_loss_layers_output_is_a_wiring_mistake(tmp_path):
    result, data = verify(net(tmp_path, loss="self.lastLayer.forward(self.predict(x), t) * 2"))
    assert result.exit_code == 1
    wiring = next(c for c in data["checks"] if c["name"] == "wiring")
    assert "the loss TwoLayerNet returned is not lastLayer's output" in wiring["message"]


def test_an_unknown_layer_is_named_and_the_rest_still_checked(tmp_path):
    target = net(tmp_path, extra_class="Dropout", extra_layer='self.layers["Dropout1"] = Dropout()')
    result, data = verify(target)
    assert result.exit_code == 1
    assert failing(data) == ["Dropout1: no rule"]
    unknown = next(c for c in data["checks"] if c["name"] == "Dropout1: no rule")
    assert "cannot tell which rule Dropout implements" in unknown["message"] and "derivcheck rules" in unknown["message"]
    assert {"Affine1: grad W", "Affine2: grad W", "Relu1: grad x"} <= {c["name"] for c in data["checks"] if c["passed"]}


def test_mnist_sizes_on_request(tmp_path):
    result, data = verify(NETWORKS / "dlfs1_net.py:TwoLayerNet", "--shape", "input_size=784,hidden_size=50,output_size=10,N=100",
                          "--trials", "1")
    assert result.exit_code == 0, result.output[-2000:]
    grad = next(c for c in data["checks"] if c["name"] == "Affine1: grad W")
    assert grad["dims"] == {"input_size": 784, "hidden_size": 50, "output_size": 10, "N": 100}


@pytest.mark.parametrize("args,message", [
    (["--shape", "width=3"], "--shape names width, but TwoLayerNet's constructor has the sizes input_size, hidden_size, output_size"),
    (["--shape", "N=0"], "--shape N must be a positive integer"),
    (["--hyper", "eps=1"], "is a network: --hyper, --style and --kinks are for one layer"),
])
def test_network_option_mistakes_exit_2(args, message):
    result = CliRunner().invoke(main, ["verify", str(NETWORKS / "dlfs1_net.py:TwoLayerNet"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_the_broken_networks_readme_is_the_catalogue():
    rows = {m.group(1): line for line in (NETWORKS / "broken" / "README.md").read_text().splitlines()
            if (m := re.match(r"^\| `([\w.:]+)` \|", line))}
    assert set(rows) == {t.removeprefix("networks/broken/") for t, _, _ in BROKEN_NETWORKS}
    for target, caught, _ in BROKEN_NETWORKS:
        for check in caught:
            assert check in rows[target.removeprefix("networks/broken/")], (target, check)


def test_assert_backward_checks_a_network_in_a_hand_written_test(tmp_path, monkeypatch):
    import sys

    import derivcheck

    (tmp_path / "mynet.py").write_text(NET_TEMPLATE.format(**_DEFAULTS))
    (tmp_path / "badnet.py").write_text(NET_TEMPLATE.format(**{**_DEFAULTS, "relu_backward": "return dout"}))
    monkeypatch.syspath_prepend(str(tmp_path))
    import badnet
    import mynet

    report = derivcheck.assert_backward(mynet.TwoLayerNet, trials=2)
    assert report.rule == "network" and report.verdict == "pass"
    with pytest.raises(AssertionError, match="first layer that disagrees with its rule: Relu1: grad x"):
        derivcheck.assert_backward(badnet.TwoLayerNet, trials=2)
    sys.modules.pop("mynet"), sys.modules.pop("badnet")


def test_explain_model_prints_the_network_as_the_chain_of_its_layers_rules():
    result = CliRunner().invoke(main, ["explain", "--model", str(NETWORKS / "dlfs1_net.py:TwoLayerNet")])
    assert result.exit_code == 0, result.output
    lines = [ln.strip() for ln in result.output.splitlines()]
    assert lines[0] == "TwoLayerNet, a network (dlfs1): x -> Affine1 -> Relu1 -> Affine2 -> lastLayer -> loss"
    forward = lines[lines.index("forward, layer by layer (each layer's output is the next one's x):") + 1:][:4]
    assert [re.split(r"\s{2,}", ln) for ln in forward] == [
        ["Affine1 (affine)", "out = x @ W + b"], ["Relu1 (relu)", "out = maximum(x, 0)"], ["Affine2 (affine)", "out = x @ W + b"],
        ["lastLayer SoftmaxWithLoss (softmax_with_loss)", "y = softmax(x, axis=-1); out = -sum(t * log(y + eps)) / N"]]
    backward = lines[lines.index("backward, from dout = 1 at the loss to x (each layer's dout is the dx of the layer after it):") + 1:][:4]
    assert [re.split(r"\s{2,}", ln, maxsplit=1) for ln in backward] == [
        ["lastLayer SoftmaxWithLoss (softmax_with_loss)", "dx = dout·(y - t) / N"],
        ["Affine2 (affine)", "dx = dout Wᵀ,  dW = xᵀ dout,  db = Σₙ dout"],
        ["Relu1 (relu)", "dx = dout·[x > 0]"],
        ["Affine1 (affine)", "dx = dout Wᵀ,  dW = xᵀ dout,  db = Σₙ dout"]]
    assert lines[-1].endswith("(this run: PASS)")


@pytest.mark.parametrize("args,message", [
    (["--model", "examples/dlfs1/layers.py:Affine"], "is not a network derivcheck knows"),
    (["affine", "--model", "examples/networks/dlfs1_net.py:TwoLayerNet"], "--model takes no rule"),
    (["--model", "examples/networks/nothere.py:Net"], "not found"),
])
def test_explain_model_mistakes_exit_2(args, message, monkeypatch):
    monkeypatch.chdir(EXAMPLES.parent)
    result = CliRunner().invoke(main, ["explain", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_network_with_predict_and_no_loss_has_each_layers_forward_checked():
    result, data = verify(NETWORKS / "dlfs2_predict.py:TwoLayerNet", "--trials", "3")
    assert result.exit_code == 0, result.output[-2000:]
    assert data["forward_only"] == "TwoLayerNet has layers and predict() and no loss: each layer's forward is checked"
    assert sorted(c["name"] for c in data["checks"]) == ["layers[0] (Affine): forward", "layers[1] (Sigmoid): forward",
                                                         "layers[2] (Affine): forward"]
    assert [layer["rule"] for layer in data["layers"]] == ["affine", "sigmoid", "affine"]


def test_a_forward_only_networks_wrong_layer_is_named_with_its_diagnosis():
    result, data = verify(NETWORKS / "broken" / "seed_softmax.py:TwoLayerNet")
    assert data["notes"][0] == "first layer that disagrees with its rule: layers[3] (Softmax): forward (layers in forward order)"
    assert [d["message"].split(": forward: ")[0] for d in data["diagnosis"]] == ["layers[3] (Softmax)"]


def test_a_dezero_model_is_checked_node_by_node_on_its_graph():
    result, data = verify(NETWORKS / "dezero_net.py:TwoLayerNet", "--shape", "hidden_size=50,out_size=10,N=100,D=784", "--trials", "1")
    assert result.exit_code == 0, result.output[-2000:]
    assert data["style"] == "dezero"
    assert [(layer["name"], layer["kind"], layer["rule"]) for layer in data["layers"]] == [
        ("l1", "Linear", "affine"), ("Sigmoid#1", "Sigmoid", "sigmoid"), ("l2", "Linear", "affine")]
    grad = next(c for c in data["checks"] if c["name"] == "l1 (Linear): grad W")
    assert grad["where"] == "Linear.backward(gy)[1] (l1)" and grad["dims"] == {"hidden_size": 50, "out_size": 10, "N": 100, "D": 784}


def test_a_dezero_parameter_the_forward_never_uses_is_a_wiring_mistake(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(EXAMPLES / "dezero_style")!r})
        import functions as F
        import layers as L
        from layers import Model

        class TwoLayerNet(Model):
            def __init__(self, hidden_size, out_size):
                super().__init__()
                self.l1 = L.Linear(hidden_size)
                self.l2 = L.Linear(out_size)
                self.l3 = L.Linear(out_size, in_size=hidden_size)  # BUG: defined, never applied

            def forward(self, x):
                return self.l2(F.sigmoid(self.l1(x)))
    '''))
    result, data = verify(tmp_path / "net.py:TwoLayerNet")
    assert result.exit_code == 1
    wiring = next(c for c in data["checks"] if c["name"] == "wiring")
    assert "parameter l3.W is not used by the model's forward: its gradient is None" in wiring["message"]
