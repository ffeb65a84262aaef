"""The outbound door: Sluice as the instance's forward proxy.

``ca`` is the local certificate authority the instance trusts; ``proxy`` answers
CONNECT (tunnelling the hosts in ``[outbound] tunnel``, intercepting the rest with
certificates minted by the CA) and plain-HTTP proxy requests, applying the
``[network]`` rules to every destination and handing each intercepted request to
one ``Handler``, which by default forwards it.
"""

__all__: list[str] = []
