"""Broken operations of a micrograd-style Value (see examples/micrograd/engine.py for the correct ones): each class
has one bug, catalogued in examples/broken/README.md and caught by the gate (examples/derivcheck.toml)."""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from micrograd.engine import Value  # noqa: E402


class ValueMulOverwrites(Value):
    def __mul__(self, other):
        other = other if isinstance(other, Value) else ValueMulOverwrites(other)
        out = ValueMulOverwrites(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad = other.data * out.grad  # = where += belongs: x * x keeps one of its two terms
            other.grad = self.data * out.grad
        out._backward = _backward
        return out


class ValueMulIgnoresUpstream(Value):
    def __mul__(self, other):
        other = other if isinstance(other, Value) else ValueMulIgnoresUpstream(other)
        out = ValueMulIgnoresUpstream(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data  # the local derivative alone: out.grad is not multiplied
            other.grad += self.data
        out._backward = _backward
        return out


class ValueTanhFromInput(Value):
    def tanh(self):
        out = ValueTanhFromInput(math.tanh(self.data), (self,), "tanh")

        def _backward():
            self.grad += (1 - self.data ** 2) * out.grad  # 1 - x², where 1 - tanh(x)² belongs
        out._backward = _backward
        return out


class ValuePowExponentKept(Value):
    def __pow__(self, k):
        out = ValuePowExponentKept(self.data ** k, (self,), f"**{k}")

        def _backward():
            self.grad += k * self.data ** k * out.grad  # x^k where x^(k-1) belongs
        out._backward = _backward
        return out
