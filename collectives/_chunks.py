"""Partition of a buffer of ``count`` elements into ``parts`` chunks."""

__all__ = ["chunk_bounds"]


def chunk_bounds(count, parts):
    """Return ``(starts, sizes)`` of ``parts`` contiguous chunks covering ``count``.

    The first ``count % parts`` chunks get ``ceil(count / parts)`` elements,
    the rest ``floor(count / parts)``, so sizes differ by at most one and a
    chunk may be empty when ``count < parts``.

    >>> chunk_bounds(7, 3)
    ([0, 3, 5], [3, 2, 2])
    """
    if parts < 1 or count < 0:
        raise ValueError(f"need parts >= 1 and count >= 0, got parts={parts}, "
                         f"count={count}")
    base, extra = divmod(count, parts)
    sizes = [base + (i < extra) for i in range(parts)]
    starts = [0] * parts
    for i in range(1, parts):
        starts[i] = starts[i - 1] + sizes[i - 1]
    return starts, sizes
