"""The graph IR: types, values, nodes, graphs, the text form and the op families."""
