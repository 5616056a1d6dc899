"""Valid/ready stream helpers for Amaranth testbenches (`sim.add_testbench`).

Streams follow amaranth.lib.stream: a beat transfers on a cycle where valid and
ready are both high; once valid is raised the payload holds until then (the
units read a channel beat on several cycles before accepting it).
"""

from __future__ import annotations


async def put(ctx, stream, payload) -> None:
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def get(ctx, stream):
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload
