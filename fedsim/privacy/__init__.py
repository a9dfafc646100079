"""Differential privacy around any strategy: the ``[privacy]`` table of a scenario.

User-level DP: each client's update is clipped and Gaussian noise, scaled to the
sensitivity of the wrapped strategy's weighting, is added to the aggregate
(central DP), or each client clips and noises its own update before sending
(local DP). The privacy spent is accounted per round with Google's
``dp-accounting`` under the participation pattern's actual sampling. The pieces:
:mod:`~fedsim.privacy.mechanism` (the pure math), :mod:`~fedsim.privacy.options`
(the table), :mod:`~fedsim.privacy.wrapper` (the strategy wrapper),
:mod:`~fedsim.privacy.accounting` (ε). docs/privacy.md derives every formula.
"""
