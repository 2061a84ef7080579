"""Whole networks: each layer against its rule on what flows through the model, and the wiring between them."""
import re
import textwrap

import pytest


from bindings import BROKEN_NETWORKS, EXAMPLES
from runner import failing, run, verify_json as verify

NETWORKS = EXAMPLES / "networks"


@pytest.mark.parametrize("target", ["dlfs1_net.py:TwoLayerNet", "dlfs2_net.py:TwoLayerNet", "dezero_net.py:TwoLayerNet",
                                    "cs231n_net.py:TwoLayerNet", "cs231n_net.py:FullyConnectedNet"])
def test_the_example_networks_verify_layer_by_layer(target):
    result, data = verify(NETWORKS / target, "--trials", "3")
    assert result.exit_code == 0, result.output[-2000:]
    assert data["rule"] == "network" and data["verdict"] == "pass"
    names = {c["name"] for c in data["checks"]}
    assert "network gradients" in names and any(n.endswith(": grad W") for n in names)
    assert any(n.startswith("network: ") and "affine" in n for n in data["notes"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("target", ["book1_loss_net.py:TwoLayerNet", "book2_loss_net.py:TwoLayerNet"])
def test_the_books_nets_as_published_are_judged_as_their_layers_are_alone(target, dtype):
    # log(y + 1e-7) in the loss: the layer check takes it as the rule's also = [1e-7]; inside a network the
    # same judge runs, so the loss layer passes there too, and says so in the same words
    result, data = verify(NETWORKS / target, "--trials", "6", "--dtype", dtype)
    assert result.exit_code == 0, result.output[-2000:]
    loss = next(c["name"] for c in data["checks"] if c["name"].endswith("(SoftmaxWithLoss): forward"))
    alone, single = verify(f"{NETWORKS / target.replace(':TwoLayerNet', ':SoftmaxWithLoss')}", "--trials", "6", "--dtype", dtype)
    assert alone.exit_code == 0, alone.output[-2000:]
    if dtype == "float64":  # (in float32, 1e-7 is within the tolerance: no alternative is needed, and no note)
        assert any(n.startswith(f"{loss} is the rule's with eps = 1e-07") for n in data["notes"]), data["notes"]
        assert any(n.startswith("forward is the rule's with eps = 1e-07") for n in single["notes"])


@pytest.mark.parametrize("target,caught,kind", BROKEN_NETWORKS, ids=[b[0].rpartition("/")[2] for b in BROKEN_NETWORKS])
def test_each_broken_network_fails_where_the_catalogue_says(target, caught, kind):
    result, data = verify(EXAMPLES / target, "--trials", "3")
    assert result.exit_code == 1, result.output[-2000:]
    assert failing(data) == sorted(caught)
    assert set(kind) <= {d["kind"] for d in data["diagnosis"]}


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
            {loss_backward}

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
                dout = {backward_step}
            return {{"W1": self.layers["Affine1"].dW, "b1": self.layers["Affine1"].db,
                    "W2": self.layers["Affine2"].dW, "b2": self.layers["Affine2"].db}}
''')
_DEFAULTS = dict(relu_backward="return np.where(self.mask, 0.0, dout)", extra_class="Unused", extra_layer="",
                 loss_backward="return dx * dout / len(self.t)", backward_step="layer.backward(dout)",
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
    target = net(tmp_path, extra_class="Passthrough", extra_layer='self.layers["Passthrough1"] = Passthrough()')
    result, data = verify(target)
    assert result.exit_code == 1
    assert failing(data) == ["Passthrough1: no rule"]
    unknown = next(c for c in data["checks"] if c["name"] == "Passthrough1: no rule")
    assert "cannot tell which rule Passthrough implements" in unknown["message"] and "derivcheck rules" in unknown["message"]
    assert {"Affine1: grad W", "Affine2: grad W", "Relu1: grad x"} <= {c["name"] for c in data["checks"] if c["passed"]}


def test_a_layer_of_several_outputs_is_named_as_not_checked_in_a_network(tmp_path):
    target = net(tmp_path, extra_class="LSTM", extra_layer='self.layers["LSTM1"] = LSTM()')
    result, data = verify(target)
    assert result.exit_code == 1 and failing(data) == ["LSTM1: no rule"]
    unknown = next(c for c in data["checks"] if c["name"] == "LSTM1: no rule")
    assert "rule 'lstm' has several outputs (h_next, c_next), and a layer of several outputs is not checked inside a " \
           "network yet: check it alone with derivcheck verify" in unknown["message"]


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
    result = run("verify", str(NETWORKS / "dlfs1_net.py:TwoLayerNet"), *args)
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
    result = run("explain", "--model", str(NETWORKS / "dlfs1_net.py:TwoLayerNet"))
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
    result = run("explain", *args)
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


# ---------------------------------------------------------------------------
# CS231n: loss(X, y) -> (loss, grads), made of layer functions

CS231N = '''
import sys
import numpy as np
sys.path.insert(0, {functional!r})
from layers import affine_forward, affine_backward, relu_forward, relu_backward, softmax_loss


class TwoLayerNet:
    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10, weight_scale=1e-3, reg=0.0):
        self.reg = reg
        self.params = {{"W1": weight_scale * np.random.randn(input_dim, hidden_dim), "b1": np.zeros(hidden_dim),
                        "W2": weight_scale * np.random.randn(hidden_dim, num_classes), "b2": np.zeros(num_classes)}}

    def loss(self, X, y=None):
        W1, b1, W2, b2 = (self.params[k] for k in ("W1", "b1", "W2", "b2"))
        a1, cache1 = affine_forward(X, W1, b1)
        h1, cache2 = relu_forward(a1)
        scores, cache3 = affine_forward(h1, W2, b2)
        loss, dscores = softmax_loss(scores, y)
        loss += {loss_reg}
        grads = {{}}
        dh1, grads["W2"], grads["b2"] = affine_backward({dscores}, cache3)
        da1 = {relu_back}
        dX, grads["W1"], grads["b1"] = affine_backward(da1, cache1)
        grads["W1"] += {grad_reg1}
        grads["W2"] += {grad_reg2}
        return loss, grads
'''


def cs231n_net(tmp_path, **edits):
    fields = dict(functional=str(EXAMPLES / "functional"), loss_reg="0.5 * self.reg * (np.sum(W1 * W1) + np.sum(W2 * W2))",
                  dscores="dscores", relu_back="relu_backward(dh1, cache2)", grad_reg1="self.reg * W1",
                  grad_reg2="self.reg * W2")
    fields.update(edits)
    (tmp_path / "fc_net.py").write_text(CS231N.format(**fields))
    return f"{tmp_path / 'fc_net.py'}:TwoLayerNet"


def test_a_cs231n_model_is_checked_function_by_function_with_its_regularization(tmp_path):
    result, data = verify(cs231n_net(tmp_path), "--trials", "3")
    assert result.exit_code == 0, result.output[-3000:]
    assert data["style"] == "functional"
    assert [(l["name"], l["rule"]) for l in data["layers"]] == [
        ("affine_forward#1", "affine"), ("relu_forward#1", "relu"), ("affine_forward#2", "affine"),
        ("softmax_loss#1", "softmax_with_loss")]
    assert "regularization in TwoLayerNet's loss: ½·reg·Σ p² over params['W1'], params['W2'] (reg = 0.1), read from its " \
        "value; the gradients are checked with it" in data["notes"]
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["affine_forward#1: grad W"]["where"] == "affine_backward#2[1]"  # the second backward call is the first layer's
    assert checks["softmax_loss#1: grad x"]["where"] == "softmax_loss#1[1]"


@pytest.mark.parametrize("edits,c", [
    (dict(loss_reg="0.0", grad_reg1="0.0", grad_reg2="0.0"), None),  # no regularization at all is consistent too
    (dict(loss_reg="self.reg * (np.sum(W1 * W1) + np.sum(W2 * W2))", grad_reg1="2 * self.reg * W1",
          grad_reg2="2 * self.reg * W2"), "reg·Σ p² over params['W1'], params['W2']"),  # assignment 1's form
    (dict(loss_reg="0.5 * self.reg * sum(np.sum(p * p) for p in self.params.values())",
          grad_reg1="self.reg * W1", grad_reg2="self.reg * W2 + 0 * b2.sum()"), None),  # biases in the loss, not the grads
])
def test_the_regularization_is_read_off_the_loss_and_its_gradient_held_to_it(tmp_path, edits, c):
    result, data = verify(cs231n_net(tmp_path, **edits), "--trials", "2")
    note = next(n for n in data["notes"] if n.startswith("regularization in "))
    if "sum(np.sum(p * p)" in edits["loss_reg"]:  # the biases' term has no gradient in grads['b1'], grads['b2']
        assert result.exit_code == 1
        assert "over params['W1'], params['b1'], params['W2'], params['b2']" in note
        wiring = next(x for x in data["checks"] if x["name"] == "wiring")
        assert "grads['b1'] lacks the regularization's gradient reg·b1, which the loss's ½·reg·Σ b1² has" in wiring["message"]
        assert {d["kind"] for d in data["diagnosis"]} == {"regularization"}
        return
    assert result.exit_code == 0, result.output[-3000:]
    assert (c or "none") in note


def test_a_loss_term_that_is_no_l2_regularization_is_named(tmp_path):
    result, data = verify(cs231n_net(tmp_path, loss_reg="self.reg * (np.sum(np.abs(W1)) + np.sum(np.abs(W2)))"), "--trials", "1")
    assert result.exit_code == 1
    assert failing(data) == ["network gradients", "wiring"]
    assert [d["kind"] for d in data["diagnosis"]] == ["regularization"]
    assert "which is no L2 term c·reg·Σ W² (c = ½ or 1, reg = 0.1" in data["diagnosis"][0]["message"]


def test_a_gradient_with_regularization_the_loss_lacks_is_named(tmp_path):
    result, data = verify(cs231n_net(tmp_path, loss_reg="0.0"), "--trials", "1")
    assert result.exit_code == 1
    messages = [d["message"] for d in data["diagnosis"]]
    assert messages == ["wiring: grads['W1'] has reg·W1 added; the loss has no term in W1, whose gradient is 0·reg·W1",
                        "wiring: grads['W2'] has reg·W2 added; the loss has no term in W2, whose gradient is 0·reg·W2"]


def test_a_backward_given_the_output_for_its_cache_is_paired_by_order_and_said(tmp_path):
    """relu_backward(dh1, h1): h1 > 0 where a1 > 0, so the gradient is right; the pairing is by order, and the report says so."""
    result, data = verify(cs231n_net(tmp_path, relu_back="relu_backward(dh1, h1)"), "--trials", "2")
    assert result.exit_code == 0, result.output[-3000:]
    assert "relu_backward#1 was given something other than the cache relu_forward#1 returned; it is taken as " \
        "relu_forward#1's backward, by order" in data["notes"]


def test_a_dout_that_is_not_the_next_layers_dx_is_a_wiring_mistake(tmp_path):
    result, data = verify(cs231n_net(tmp_path, dscores="2 * dscores"), "--trials", "1")
    assert result.exit_code == 1
    assert failing(data) == ["network gradients", "wiring"]
    assert "affine_backward#1's dout is not softmax_loss#1's dx" in next(c for c in data["checks"] if c["name"] == "wiring")["message"]


def test_a_layer_never_back_propagated_is_a_wiring_mistake(tmp_path):
    result, data = verify(cs231n_net(tmp_path, relu_back="dh1"), "--trials", "1")
    assert result.exit_code == 1
    wiring = next(c for c in data["checks"] if c["name"] == "wiring")["message"]
    assert "relu_forward#1 is never back-propagated: no relu_backward was given its cache" in wiring
    grads = next(c for c in data["checks"] if c["name"] == "network gradients")["message"]
    assert re.findall(r"params\['(\w+)'\]", grads) == ["W1", "b1"]  # only what lies behind the relu


def test_a_function_with_no_rule_is_a_boundary_the_rest_is_checked_around(tmp_path):
    path = cs231n_net(tmp_path, relu_back="relu_backward(scale_backward(dh1, cache_s), cache2)")
    src = (tmp_path / "fc_net.py").read_text()
    src = src.replace("        scores, cache3 = affine_forward(h1, W2, b2)",
                      "        h1, cache_s = scale_forward(h1)\n        scores, cache3 = affine_forward(h1, W2, b2)")
    src = src.replace("class TwoLayerNet:", "def scale_forward(x):\n    return 3 * x, None\n\n\n"
                      "def scale_backward(dout, cache):\n    return 3 * dout\n\n\nclass TwoLayerNet:")
    (tmp_path / "fc_net.py").write_text(src)
    result, data = verify(path, "--trials", "2")
    assert result.exit_code == 1
    assert failing(data) == ["scale_forward#1: no rule"]
    assert [l["rule"] for l in data["layers"]] == ["affine", "relu", None, "affine", "softmax_with_loss"]
    assert "cannot tell which rule scale_forward implements" in next(c for c in data["checks"] if not c["passed"])["message"]


@pytest.mark.parametrize("body,message", [
    ("return 1.0", "TwoLayerNet.loss(X, y) returned a float, not (loss, grads)"),
    ("return float(np.sum(X)), {}", "TwoLayerNet.loss called no loss function with a rule (softmax_loss(x, y), svm_loss(x, y))"),
])
def test_a_cs231n_model_that_cannot_be_composed_from_rules_exits_2(tmp_path, body, message):
    (tmp_path / "net.py").write_text(textwrap.dedent(f'''
        import numpy as np

        class TwoLayerNet:
            def __init__(self, input_dim=4, num_classes=3):
                self.params = {{"W1": np.zeros((input_dim, num_classes))}}

            def loss(self, X, y=None):
                {body}
    '''))
    result, data = verify(f"{tmp_path / 'net.py'}:TwoLayerNet")
    assert result.exit_code == 2 and message in result.output, result.output


def test_assert_backward_checks_a_cs231n_model(tmp_path, monkeypatch):
    import sys

    import derivcheck

    cs231n_net(tmp_path, grad_reg2="0.0")  # W2's gradient lacks reg * W2
    monkeypatch.syspath_prepend(str(tmp_path))
    import fc_net

    with pytest.raises(AssertionError, match=r"grads\['W2'\] lacks the regularization's gradient reg·W2"):
        derivcheck.assert_backward(fc_net.TwoLayerNet, trials=1)
    sys.modules.pop("fc_net")


DROPOUT = """
class Dropout:
    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
    def forward(self, x):
        self.mask = np.random.rand(*x.shape) > self.dropout_ratio
        return x * self.mask
    def backward(self, dout):
        return {backward}
"""


@pytest.mark.parametrize("backward,caught", [("dout * self.mask", []), ("dout", ["Dropout1: grad x", "network gradients"])])
def test_a_dropout_layer_inside_a_network_is_checked_with_the_mask_it_drew(tmp_path, backward, caught):
    target = net(tmp_path, extra_layer='self.layers["Dropout1"] = Dropout()')
    path = tmp_path / "net.py"
    path.write_text(path.read_text().replace("\nclass TwoLayerNet:", DROPOUT.format(backward=backward) + "\nclass TwoLayerNet:"))
    result, data = verify(target, "--trials", "3")
    assert result.exit_code == (1 if caught else 0), result.output[-3000:]
    assert failing(data) == caught
    assert ("Dropout1", "dropout") in [(l["name"], l["rule"]) for l in data["layers"]]
    if caught:
        assert [d["kind"] for d in data["diagnosis"]] == ["mask-ignored"]



def test_a_cs231n_dropout_after_a_relu_is_checked_with_the_mask_in_its_cache(tmp_path):
    """After a ReLU, dropout's input has zeros, whose outputs are 0 kept or not: the mask is the one in its cache;
    p = 0.8 is read from the dropout_param the model passed."""
    path = cs231n_net(tmp_path, relu_back="relu_backward(dropout_backward(dh1, cache_d), cache2)")
    src = (tmp_path / "fc_net.py").read_text()
    src = src.replace("from layers import affine_forward,", "from layers import dropout_forward, dropout_backward, affine_forward,")
    src = src.replace("        scores, cache3 = affine_forward(h1, W2, b2)",
                      "        h1, cache_d = dropout_forward(h1, {'p': 0.8, 'mode': 'train'})\n"
                      "        scores, cache3 = affine_forward(h1, W2, b2)")
    (tmp_path / "fc_net.py").write_text(src)
    result, data = verify(path, "--trials", "3")
    assert result.exit_code == 0, result.output[-3000:]
    assert ("dropout_forward#1", "dropout_functional") in [(l["name"], l["rule"]) for l in data["layers"]]


_DEZERO_MODELS = '''
import os
import sys

sys.path.insert(0, {style!r})
import functions as F  # noqa: E402
import layers as L  # noqa: E402
from layers import Model  # noqa: E402


class ImageNet(Model):
    """A model of images: derivcheck's network check feeds (N, D) vectors."""

    def __init__(self, out_size):
        super().__init__()
        self.l1 = L.Linear(out_size)

    def forward(self, x):
        N, C, H, W = x.shape
        return self.l1(F.reshape(x, (N, C * H * W)))


class SizedByList(Model):
    """DeZero's MLP(fc_output_sizes): a constructor argument that is no size."""

    def __init__(self, fc_output_sizes):
        super().__init__()
        self.l1 = L.Linear(fc_output_sizes[0])

    def forward(self, x):
        return self.l1(x)
'''


@pytest.mark.parametrize("name,message", [
    ("ImageNet", "ImageNet does not fit derivcheck's network check, which feeds a batch of vectors x of shape (N, D)"),
    ("SizedByList", "cannot build SizedByList: its constructor needs fc_output_sizes, which is no size derivcheck gives"),
    ("L.Linear", "is a DeZero Layer (dezero.layers, dezero.models)"),
])
def test_a_model_or_layer_the_network_check_does_not_fit_is_exit_2_not_a_failing_model(tmp_path, name, message):
    """Correct code the check cannot run as it is (images, a list of sizes, a bare DeZero Layer): a sentence, exit 2."""
    (tmp_path / "models.py").write_text(_DEZERO_MODELS.format(style=str(EXAMPLES / "dezero_style")))
    target = f"{tmp_path / 'models.py'}:{name}" if "." not in name else f"{EXAMPLES / 'dezero_style' / 'layers.py'}:Linear"
    result, data = verify(target)
    assert result.exit_code == 2 and data["verdict"] == "error", result.output
    assert message in data["error"], data["error"]


CS231N_IN_PLACE = '''
import sys
sys.path.insert(0, {functional!r})
import numpy as np
from layers import affine_backward, affine_forward, relu_forward


def relu_backward(dout, cache):
    x = cache
    x[x > 0] = 1  # writes into the cached activation (the layer's own output, which the model holds)
    x[x <= 0] = 0
    return dout * x


def softmax_loss(x, y):
    x -= np.max(x, axis=1, keepdims=True)  # shifts the scores in place, as many students write it
    p = np.exp(x) / np.sum(np.exp(x), axis=1, keepdims=True)
    n = x.shape[0]
    loss = -np.mean(np.log(p[np.arange(n), y]))
    p[np.arange(n), y] -= 1
    return loss, p / n


class TwoLayerNet:
    def __init__(self, input_dim=4, hidden_dim=5, num_classes=3, reg=0.0):
        self.reg = reg
        self.params = {{"W1": np.random.randn(input_dim, hidden_dim), "b1": np.zeros(hidden_dim),
                       "W2": np.random.randn(hidden_dim, num_classes), "b2": np.zeros(num_classes)}}

    def loss(self, X, y):
        h, c1 = affine_forward(X, self.params["W1"], self.params["b1"])
        a, c2 = relu_forward(h)
        s, c3 = affine_forward(a, self.params["W2"], self.params["b2"])
        loss, ds = softmax_loss(s, y)
        loss += 0.5 * self.reg * (np.sum(self.params["W1"] ** 2) + np.sum(self.params["W2"] ** 2))
        grads = {{}}
        da, grads["W2"], grads["b2"] = affine_backward(ds, c3)
        dh = relu_backward(da, c2)
        _, grads["W1"], grads["b1"] = affine_backward(dh, c1)
        grads["W1"] += self.reg * self.params["W1"]
        grads["W2"] += self.reg * self.params["W2"]
        return loss, grads
'''


def test_a_write_in_place_inside_a_model_is_a_warning_not_a_wiring_mistake(tmp_path):
    # the gradients are right; the writes into the scores and into the cached activation happen after the
    # calls that made them, so the layers are judged on the copies made at each call, and the writes named
    (tmp_path / "net.py").write_text(CS231N_IN_PLACE.format(functional=str(EXAMPLES / "functional")))
    result, data = verify(tmp_path / "net.py:TwoLayerNet", "--trials", "3")
    assert result.exit_code == 0, result.output[-3000:]
    said = sorted(w["message"] for w in data["warnings"] if w["kind"] == "mutates-input")
    assert said == ["relu_backward#1 wrote into its argument 'cache' in place (an array the model may use again: copy it first)",
                    "softmax_loss#1 wrote into its argument 'x' in place (an array the model may use again: copy it first)"]


def test_book_1s_relu_writing_into_dout_is_the_warning_a_layer_alone_gets(tmp_path):
    # book 1's Relu.backward does dout[self.mask] = 0: right, and a side effect, inside a network as alone
    result, data = verify(net(tmp_path, relu_backward="dout[self.mask] = 0; return dout"), "--trials", "3")
    assert result.exit_code == 0, result.output[-2000:]
    assert [w["message"] for w in data["warnings"]] == [
        "Relu1.backward wrote into its argument 'dout' in place (an array the model may use again: copy it first)"]


def test_a_model_of_images_is_refused_before_it_is_called(tmp_path):
    # CS231n's ThreeLayerConvNet(input_dim=(3, 32, 32)) and book 1's SimpleConvNet(input_dim=(1, 28, 28)): the check
    # fed an int where the model wants a shape, and the model's TypeError was its FAIL
    (tmp_path / "cnn.py").write_text(textwrap.dedent('''
        import numpy as np


        class ThreeLayerConvNet:
            def __init__(self, input_dim=(3, 32, 32), num_filters=32, hidden_dim=100, num_classes=10, reg=0.0):
                C, H, W = input_dim
                self.reg = reg
                self.params = {"W1": np.random.randn(num_filters, C, 7, 7)}

            def loss(self, X, y=None):
                raise AssertionError("never called")
    '''))
    result, data = verify(tmp_path / "cnn.py:ThreeLayerConvNet")
    assert result.exit_code == 2, result.output
    assert "ThreeLayerConvNet takes a shape (input_dim=(3, 32, 32))" in result.output
    assert "feeds a batch of vectors (N, D) only" in result.output


def test_a_model_that_raises_in_its_first_step_still_shows_its_layers(tmp_path):
    """What was found before the model raised is kept: the chain of layers, and the layer with no rule."""
    result, data = verify(net(tmp_path, relu_backward="raise ValueError('boom')", extra_class="Scale",
                              extra_layer='self.layers["Scale1"] = Scale()'))
    assert result.exit_code == 1
    assert failing(data) == ["Scale1: no rule", "model raised"], failing(data)
    assert any(n.startswith("network: Affine1: affine -> Relu1: relu -> Scale1: no rule") for n in data["notes"]), data["notes"]
    assert [l["name"] for l in data["layers"]] == ["Affine1", "Relu1", "Scale1", "Affine2", "lastLayer"]
