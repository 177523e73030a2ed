"""Registry and builder of proposal generators (RPN, precomputed proposals)."""
from detzoo.utils.registry import Registry

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
Proposal generators take (images: ImageList, features: dict[str, Tensor], gt_instances) and
return (proposals: list[Instances], losses: dict). Registered classes are built as
`cls(cfg, input_shape)`, with `input_shape` the backbone's dict of ShapeSpec.
"""


def build_proposal_generator(cfg, input_shape):
    """The proposal generator named by cfg.MODEL.PROPOSAL_GENERATOR.NAME, or None for
    "PrecomputedProposals" (proposals then come with the inputs)."""
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        return None
    return PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
