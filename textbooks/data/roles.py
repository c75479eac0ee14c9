"""The data roles of the phi-1 / phi-1.5 mixtures and their ids: the one place that names them.

A role is a kind of training data with its own shard folder (``<data_root>/<role>/``), its own seqio task
and its own loss curve. Every token of a packed batch carries its role's id (``decoder_role_ids``): role
``ROLES[i]`` has id ``i + 1``, and id 0 (:data:`PAD_ROLE_ID`) marks padding. Corpora, curation, mixtures,
training and evaluation all take the names and ids from here.
"""

from __future__ import annotations

ROLES: tuple[str, ...] = (
    "synthetic_textbooks",  # phi-1.5's synthetic NLP textbooks (teacher-written)
    "code_textbooks",  # phi-1's synthetic Python textbooks: prose interleaved with code
    "code_exercises",  # phi-1's CodeExercises: signature + docstring -> body
    "code_filtered",  # The Stack / StackOverflow Python filtered by an educational-value classifier
    "web_filtered",  # phi-1.5-web's filtered web text (Falcon RefinedWeb filtered by the classifier)
    "web_raw",  # unfiltered web text, the baseline
)
PAD_ROLE_ID = 0
PAD_ROLE_NAME = "padding"
# Role ids carried per token (decoder_role_ids); 0 marks padding.
ROLE_IDS: dict[str, int] = {role: i + 1 for i, role in enumerate(ROLES)}
# The name of every id, in id order: ID_NAMES[role_id].
ID_NAMES: tuple[str, ...] = (PAD_ROLE_NAME, *ROLES)


def check_role(role: str) -> str:
    """Returns ``role`` if it is a known data role.

    Raises:
        ValueError: unknown role; the message lists the known ones.
    """
    if role not in ROLES:
        raise ValueError(f"unknown data role {role!r}; known roles: {', '.join(ROLES)}")
    return role


def role_name(role_id: int) -> str:
    """The role of a ``decoder_role_ids`` value (``'padding'`` for 0).

    Raises:
        ValueError: an id outside ``0..len(ROLES)``.
    """
    role_id = int(role_id)
    if not 0 <= role_id < len(ID_NAMES):
        raise ValueError(f"unknown role id {role_id}; ids are 1..{len(ROLES)} ({', '.join(ROLES)}) and "
                         f"{PAD_ROLE_ID} for padding")
    return ID_NAMES[role_id]
