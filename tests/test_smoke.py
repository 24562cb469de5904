def test_node_starts_and_serves_well_known(node):
    doc = node.well_known()
    assert doc["node_id"].startswith("stigmem:node:")
    assert node.api_key.startswith("stgm_")
