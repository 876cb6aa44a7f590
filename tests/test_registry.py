"""The declared option validator (seqmix.registry): what each annotation kind and rule admits, the messages, where
it runs, and that every registered mixer and FFN declares its options in a form it understands."""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import pytest

from seqmix.ffn import FFNS
from seqmix.mixers import MIXERS
from seqmix.mixers.rwkv7 import RWKV7
from seqmix.registry import (EVEN, NON_NEGATIVE, POSITIVE, POWER_OF_TWO, Annotated, Literal, Registry, _admits,
                             _declared, _describe, at_least)

TOYS = Registry("toy")


@TOYS.register("toy")
class Toy:
    def __init__(self, d_model, *, layer_idx=0, n_layers=1, size: Annotated[int, POSITIVE] = 4,
                 mode: Literal["a", "b"] = "a", eps: Annotated[float, POSITIVE] | None = None):
        self.d_model, self.layer_idx, self.size, self.mode, self.eps = d_model, layer_idx, size, mode, eps


@TOYS.register("toy_alias")
class ToyAlias(Toy):
    """Registered without its own __init__ (as ttt_linear / ttt_mlp)."""


@TOYS.register("toy_narrow")
class ToyNarrow(Toy):
    def __init__(self, d_model, *, layer_idx=0, n_layers=1, size: Annotated[int, at_least(8)] = 8):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers, size=size)


class _Base:
    """A private base taking the options unannotated (as rwkv6's RWKVMatrixMixer)."""

    def __init__(self, d_model, *, layer_idx=0, n_layers=1, size):
        self.size = size


@TOYS.register("through_base")
class ThroughBase(_Base):
    def __init__(self, d_model, *, layer_idx=0, n_layers=1, size: Annotated[int, POWER_OF_TWO] = 1):
        super().__init__(d_model, layer_idx=layer_idx, n_layers=n_layers, size=size)


@pytest.mark.parametrize("annotation, good, bad", [
    (int, [0, -3, 7], [True, False, 2.0, "3", None]),
    (float, [0.5, -1e-9, 2, 0], [True, False, "1.0", None, 1j]),
    (bool, [True, False], [0, 1, "True", None]),
    (Literal["sh", "mh"], ["sh", "mh"], ["mf", "SH", None, 0]),
    (Literal[1, "auto"], [1, "auto"], [True, 1.0, 2]),
    (int | None, [None, 3], [True, 2.5, "x"]),
    (tuple[float, float], [(0.0, 1.0), [0, 1.5], (-2, -1)], [(1.0,), (1.0, 2.0, 3.0), (1.0, "x"), (True, 1.0), "ab",
                                                             1.0, None]),
    (tuple[Annotated[float, NON_NEGATIVE], float], [(0.0, -1.0), (2, 3.5)], [(-0.1, 1.0)]),
    (Sequence[float], [[1, 2.5], (), (0.0,)], [[1, "x"], [True], "ab", 1.0, {1.0}]),
    (Annotated[int, POSITIVE], [1, 64], [0, -1, True, 1.5]),
    (Annotated[float, POSITIVE], [1e-9, 3], [0.0, -1.0, float("nan"), True]),
    (Annotated[int, NON_NEGATIVE], [0, 5], [-1, False]),
    (Annotated[float, NON_NEGATIVE], [0.0, 0.1], [-1e-9]),
    (Annotated[int, POWER_OF_TWO], [1, 2, 64, 1024], [0, -2, 3, 48, 2.0]),
    (Annotated[int, EVEN], [0, 2, -4], [1, 3, 2.0]),
    (Annotated[int, at_least(2)], [2, 9], [1, -5]),
    (Annotated[int, POSITIVE, EVEN], [2, 64], [0, -2, 3]),
    (Annotated[int, POSITIVE] | None, [None, 1], [0, True]),
    (Annotated[int, POSITIVE] | Literal["auto"], [3, "auto"], [0, "full", None]),
])
def test_annotation_admits_good_and_refuses_bad(annotation, good, bad):
    for value in good:
        assert _admits(annotation, value), (annotation, value)
    for value in bad:
        assert not _admits(annotation, value), (annotation, value)


@pytest.mark.parametrize("annotation, words", [
    (int, "an integer"),
    (float, "a number"),
    (bool, "True or False"),
    (Literal["sh", "mh"], "one of ['sh', 'mh']"),
    (Annotated[int, POSITIVE] | None, "an integer (> 0) or None"),
    (Annotated[int, POSITIVE, EVEN], "an integer (> 0 and even)"),
    (Annotated[int, POWER_OF_TWO], "an integer (a power of two)"),
    (Annotated[int, at_least(3)], "an integer (≥ 3)"),
    (Annotated[float, NON_NEGATIVE], "a number (≥ 0)"),
    (tuple[float, float], "a pair (a number, a number)"),
    (Sequence[float], "a sequence of a number"),
])
def test_describe_says_what_is_allowed(annotation, words):
    assert _describe(annotation) == words


def test_an_annotation_it_does_not_understand_is_an_error():
    with pytest.raises(TypeError, match="not one the validator understands"):
        _admits(set[int], {1})


def test_registry_build_checks_options_and_names_owner_option_value_and_allowed():
    toy = TOYS.build("toy", 8, options={"size": 2, "mode": "b", "eps": 1e-3}, layer_idx=1, n_layers=2)
    assert (toy.d_model, toy.layer_idx, toy.size, toy.mode, toy.eps) == (8, 1, 2, "b", 1e-3)
    with pytest.raises(ValueError) as err:
        TOYS.build("toy", 8, options={"size": 0})
    assert str(err.value) == "toy_options for 'toy' option size=0: must be an integer (> 0)"
    with pytest.raises(ValueError) as err:
        TOYS.build("toy", 8, options={"mode": "c"})
    assert str(err.value) == "toy_options for 'toy' option mode='c': must be one of ['a', 'b']"
    with pytest.raises(ValueError) as err:
        TOYS.build("toy", 8, options={"eps": -1.0})
    assert str(err.value) == "toy_options for 'toy' option eps=-1.0: must be a number (> 0) or None"


def test_unknown_options_are_refused_with_the_allowed_list():
    with pytest.raises(ValueError) as err:
        TOYS.build("toy", 8, options={"sise": 3, "mode": "a"})
    assert str(err.value) == "toy_options for 'toy': unknown option(s) ['sise']; allowed: ['size', 'mode', 'eps']"
    with pytest.raises(ValueError, match=r"toy 'toy': unknown option\(s\) \['sise'\]; allowed: \['size', 'mode', 'eps'\]"):
        Toy(8, sise=3)
    assert TOYS.option_names("toy") == ["size", "mode", "eps"]


def test_direct_construction_is_checked_too():
    assert Toy(8, size=3).size == 3
    with pytest.raises(ValueError) as err:
        Toy(8, size=True)
    assert str(err.value) == "toy 'toy' option size=True: must be an integer (> 0)"
    with pytest.raises(ValueError, match=r"mixer 'rwkv7' option chunk_size=0: must be an integer \(> 0\)"):
        RWKV7(32, 2, chunk_size=0)


def test_a_registered_subclass_checks_its_own_declaration():
    with pytest.raises(ValueError) as err:
        ToyAlias(8, size=0)
    assert str(err.value) == "toy 'toy_alias' option size=0: must be an integer (> 0)"
    assert Toy(8, size=4).size == 4
    with pytest.raises(ValueError) as err:
        ToyNarrow(8, size=4)
    assert str(err.value) == "toy 'toy_narrow' option size=4: must be an integer (≥ 8)"
    assert ToyNarrow(8, size=9).size == 9
    with pytest.raises(ValueError) as err:
        ThroughBase(8, size=6)
    assert str(err.value) == "toy 'through_base' option size=6: must be an integer (a power of two)"
    with pytest.raises(ValueError, match=r"toy_options for 'through_base' option size=6"):
        TOYS.build("through_base", 8, options={"size": 6})
    assert ThroughBase(8, size=8).size == 8


REGISTERED = [(MIXERS, name) for name in MIXERS.names()] + [(FFNS, name) for name in FFNS.names()]


@pytest.mark.parametrize("registry, name", REGISTERED, ids=[f"{r.kind}:{n}" for r, n in REGISTERED])
def test_every_registered_option_is_declared_and_its_default_admitted(registry, name):
    cls = registry.get(name)
    declared = _declared(cls)
    params = inspect.signature(cls.__init__).parameters
    assert declared, f"{name} has no options"
    for option, annotation in declared.items():
        assert option in cls.__init__.__annotations__, f"{name} option {option} has no annotation"
        assert _describe(annotation)
        default = params[option].default
        assert default is not inspect.Parameter.empty, f"{name} option {option} has no default"
        assert _admits(annotation, default), f"{name} option {option}: default {default!r} not admitted"


@pytest.mark.parametrize("registry, name", REGISTERED, ids=[f"{r.kind}:{n}" for r, n in REGISTERED])
def test_every_registered_option_refuses_a_value_of_the_wrong_type(registry, name):
    cls = registry.get(name)
    contract = (16, 2) if registry is MIXERS else (16,)
    for option in _declared(cls):
        with pytest.raises(ValueError, match=rf"{registry.kind} '{name}' option {option}=<object"):
            cls(*contract, **{option: object()})
