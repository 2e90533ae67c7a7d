"""The planner's operator tables (ptqcli/graph/ops.py) and the simulator's kernel registry
(ptqcli/sim/registry.py) name the same operators: whatever the plan runs in integers, the
simulator has an integer kernel for, and no kernel waits for an operator the plan never gives it."""

from ptqcli.graph import ops
from ptqcli.quantize.scale_table import schema
from ptqcli.sim import registry


def test_group_kinds_are_the_ones_the_table_schema_allows():
    kinds = schema()["properties"]["groups"]["additionalProperties"]["properties"]["kind"]["enum"]
    assert set(registry.KINDS) == set(kinds)


def test_integer_groups_have_kernels_for_exactly_the_planned_operators():
    assert set(registry.COMPUTE) == set(ops.COMPUTE)
    assert set(registry.BINARY) == ops.BINARY
    assert set(registry.REQUANTIZE) == ops.REQUANTIZING


def test_every_pass_through_operator_moves_codes_in_the_simulator():
    moved = set(registry.MOVES) | set(registry.MOVE_KERNELS)
    assert ops.PASS_THROUGH <= moved, ops.PASS_THROUGH - moved
    # the one mover outside PASS_THROUGH: a nearest-neighbour Resize, which the plan passes
    # through while a linear one is a requantize group
    assert moved - ops.PASS_THROUGH == {"Resize"}
    assert not set(registry.MOVES) & set(registry.MOVE_KERNELS)
