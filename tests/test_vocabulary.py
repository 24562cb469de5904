"""The domain vocabularies are defined once (stigmem_node.vocabulary): the SQL CHECK
constraints of schema.sql agree with them, and the modules that validate against a
vocabulary use the very same objects."""

from __future__ import annotations

import re
from pathlib import Path

from stigmem_node import vocabulary as v

SCHEMA = (Path(__file__).resolve().parent.parent / "schema.sql").read_text(encoding="utf-8")


def check_in(table: str, column: str) -> tuple[str, ...]:
    """The values of ``CHECK (column IN ('a', 'b', ...))`` in ``table``'s CREATE TABLE."""
    m = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \((.*?)\n\);", SCHEMA, re.S)
    assert m, f"no CREATE TABLE {table} in schema.sql"
    checks = re.findall(rf"\n\s*{column}\s+[^\n]*?CHECK \({column} IN \(([^)]*)\)\)", m.group(1))
    assert len(checks) == 1, f"{table}.{column}: expected one CHECK (... IN (...)), found {len(checks)}"
    return tuple(re.findall(r"'([^']*)'", checks[0]))


def test_schema_check_constraints_match_the_vocabularies() -> None:
    assert check_in("peers", "status") == v.PEER_STATUSES
    assert check_in("node_keys", "status") == v.KEY_STATUSES
    assert check_in("facts", "scope") == v.SCOPES


def test_vocabularies_are_consistent() -> None:
    assert set(v.FEDERATED_SCOPES) == set(v.SCOPES) - {"local"}
    assert set(v.DEFAULT_SHARED_SCOPES) <= set(v.FEDERATED_SCOPES)
    for vocab in (v.SCOPES, v.FEDERATED_SCOPES, v.DEFAULT_SHARED_SCOPES, v.PEER_STATUSES, v.KEY_STATUSES,
                  v.VALUE_TYPES, v.INTERPRET_AS, v.PERMISSIONS):
        assert isinstance(vocab, tuple) and len(set(vocab)) == len(vocab) and all(isinstance(x, str) for x in vocab)


def test_validators_use_the_vocabulary_objects() -> None:
    from stigmem_node import apikeys, config, declaration, facts, federation, page_check, values
    from stigmem_node.http import params, peers

    assert apikeys.PERMISSIONS is v.PERMISSIONS
    assert config.SCOPES is v.SCOPES
    assert config.DEFAULT_SHARED_SCOPES is v.DEFAULT_SHARED_SCOPES
    assert config.Settings().shared_scopes is v.DEFAULT_SHARED_SCOPES
    assert declaration.SCOPES is v.SCOPES
    assert facts.SCOPES is v.SCOPES
    assert facts.VALUE_TYPES is v.VALUE_TYPES  # value_from_text
    assert values.VALUE_TYPES is v.VALUE_TYPES
    assert values.INTERPRET_AS is v.INTERPRET_AS
    assert federation.FEDERATABLE_SCOPES is v.FEDERATED_SCOPES
    assert frozenset(v.FEDERATED_SCOPES) == page_check.FEDERATABLE
    assert params.SCOPES is v.SCOPES
    assert peers.PEER_STATUSES is v.PEER_STATUSES


def test_validators_accept_exactly_the_vocabulary() -> None:
    from stigmem_node.apikeys import parse_permissions
    from stigmem_node.config import parse_scopes
    from stigmem_node.errors import ConfigError, ValidationError
    from stigmem_node.facts import validate_new_fact

    assert set(parse_permissions(",".join(v.PERMISSIONS))) == set(v.PERMISSIONS)
    assert set(parse_scopes(",".join(v.SCOPES), "X")) == set(v.SCOPES)
    try:
        parse_scopes("galaxy", "X")
    except ConfigError:
        pass
    else:
        raise AssertionError("unknown scope accepted")
    body = {"entity": "e", "relation": "r", "source": "s", "value": {"type": "string", "v": "x"}}
    for scope in v.SCOPES:
        assert validate_new_fact({**body, "scope": scope}).scope == scope
    for interp in v.INTERPRET_AS:
        value = {"type": "string", "v": "x", "interpret_as": interp}
        assert validate_new_fact({**body, "value": value}).interpret_as == interp
    for bad in ({**body, "scope": "galaxy"}, {**body, "value": {"type": "blob", "v": "x"}}):
        try:
            validate_new_fact(bad)
        except ValidationError:
            continue
        raise AssertionError(bad)
