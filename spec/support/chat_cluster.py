# The sample chat over several switchboard processes, for spec/e2e/chat_cluster_spec.lua.
#
#   /usr/bin/python3 spec/support/chat_cluster.py SCENARIO PORT_A PORT_B
#
# PORT_A and PORT_B may be the same process. Prints one line of JSON: what each client
# saw, for the spec to compare. Every wait has a deadline; nothing waits on a fixed sleep
# but the rate limit's refill.
import asyncio, json, sys
import websockets

STEP = 10


class Client:
    def __init__(self, name, port):
        self.name, self.port, self.got, self.cond = name, port, [], asyncio.Condition()

    async def connect(self):
        self.got = []
        self.ws = await websockets.connect("ws://127.0.0.1:%d/chat" % self.port)
        self.task = asyncio.create_task(self.reader())
        await self.wait("welcome")
        return self

    async def reader(self):
        try:
            async for raw in self.ws:
                async with self.cond:
                    self.got.append(json.loads(raw))
                    self.cond.notify_all()
        except websockets.ConnectionClosed:
            pass

    async def send(self, **msg):
        await self.ws.send(json.dumps(msg))

    async def until(self, pred, timeout=STEP):
        async with self.cond:
            await asyncio.wait_for(self.cond.wait_for(pred), timeout)

    async def wait(self, type_, **fields):
        def match():
            for m in self.got:
                if m.get("type") == type_ and all(m.get(k) == v for k, v in fields.items()):
                    return m
        await self.until(lambda: match() is not None)
        return match()

    async def close(self):
        await self.ws.close()
        await self.task

    # A member list for room equal to `members`, received after the first `since` messages.
    async def wait_members(self, room, members, since):
        def match():
            return any(m.get("type") == "members" and m.get("room") == room and sorted(m["members"]) == members
                       for m in self.got[since:])
        await self.until(match, 30)

    # The room's messages this client has seen: from joined histories and live, in order.
    def messages(self, room):
        out = []
        for m in self.got:
            if m.get("type") == "joined" and m.get("room") == room:
                out.extend(m["history"])
            elif m.get("type") == "message" and m.get("room") == room:
                out.append(m)
        return out

    def texts(self, room):
        return [m["text"] for m in self.messages(room)]


async def user(name, port, room, **join):
    c = await Client(name, port).connect()
    await c.send(type="nick", nick=name)
    await c.wait("nick", nick=name)
    await c.send(type="join", room=room, **join)
    await c.wait("joined", room=room)
    return c


def summary(c, room):
    return [[m["id"], m["epoch"], m["nick"], m["text"]] for m in c.messages(room)]


async def says(c, room, texts):
    # within the rate limit (a burst of 10, then 5 a second)
    for i, t in enumerate(texts):
        if i and i % 5 == 0:
            await asyncio.sleep(1.05)
        await c.send(type="say", room=room, text=t)


async def order(pa, pb):
    room = "x"
    ann = await user("ann", pa, room)
    bob = await user("bob", pb, room)
    cy = await user("cy", pa, room)
    # The finding: b1, a1, a2, b2, a3 alternating between the processes, each sent
    # once the previous one was seen by its sender.
    for who, text in [(bob, "b1"), (ann, "a1"), (ann, "a2"), (bob, "b2"), (ann, "a3")]:
        await who.send(type="say", room=room, text=text)
        await who.wait("message", room=room, text=text)
    # Then both at once, without waiting.
    await asyncio.sleep(1)
    await asyncio.gather(says(ann, room, ["ann %d" % i for i in range(8)]),
                         says(bob, room, ["bob %d" % i for i in range(8)]))
    for c in (ann, bob, cy):
        await c.until(lambda c=c: len(c.messages(room)) >= 21)
    out = {c.name: summary(c, room) for c in (ann, bob, cy)}
    for c in (ann, bob, cy):
        await c.close()
    return out


async def recover(pa, pb):
    room = "y"
    ann = await user("ann", pa, room)
    bob = await user("bob", pb, room)
    await says(ann, room, ["before %d" % i for i in range(3)])
    await bob.until(lambda: len(bob.texts(room)) >= 3)
    last = bob.messages(room)[-1]
    await bob.close()
    # Missed while away: said on both processes.
    await says(ann, room, ["missed 1", "missed 2"])
    await ann.wait("message", room=room, text="missed 2")
    helper = await user("dee", pb, room)
    await helper.send(type="say", room=room, text="missed 3")
    await ann.wait("message", room=room, text="missed 3")
    # Back on the other process, with the last id seen.
    back = await user("bob", pa, room, since=last["id"], epoch=last["epoch"])
    joined = await back.wait("joined", room=room)
    await ann.send(type="say", room=room, text="live")
    await back.wait("message", room=room, text="live")
    # A since from the future, and another epoch: the last messages, not recovered.
    stale = await user("eve", pb, room, since=last["id"] + 1000, epoch=last["epoch"])
    stale_joined = await stale.wait("joined", room=room)
    other = await user("fay", pb, room, since=last["id"], epoch="another epoch")
    other_joined = await other.wait("joined", room=room)
    out = {"last": [last["id"], last["epoch"]], "joined": joined,
           "after": summary(back, room), "ann": summary(ann, room),
           "stale": [stale_joined["recovered"], len(stale_joined["history"])],
           "other": [other_joined["recovered"], len(other_joined["history"])]}
    for c in (ann, helper, back, stale, other):
        await c.close()
    return out


async def people(pa, pb):
    room = "z"
    ann = await user("ann", pa, room)
    bob = await user("bob", pb, room)
    cy = await user("cy", pa, room)
    out = {"members": {c.name: sorted((await c.wait("joined", room=room))["members"]) for c in (ann, bob, cy)}}
    # a nick is unique in the room on every process, in any case
    twin = await Client("twin", pb).connect()
    await twin.send(type="nick", nick="ANN")
    await twin.wait("nick")
    await twin.send(type="join", room=room)
    out["twin"] = (await twin.wait("error"))["code"]
    await twin.send(type="nick", nick="dee")
    await twin.wait("nick", nick="dee")
    await twin.send(type="join", room=room)
    await twin.wait("joined", room=room)
    await bob.send(type="nick", nick="Cy")
    out["rename"] = (await bob.wait("error"))["code"]
    # private messages reach their target on either process, and only it
    await bob.send(type="pm", room=room, to="ann", text="from b to a")
    await ann.wait("pm", text="from b to a")
    await ann.send(type="pm", room=room, to="BOB", text="from a to b")
    await bob.wait("pm", text="from a to b")
    await cy.send(type="pm", room=room, to="nobody", text="?")
    out["nobody"] = (await cy.wait("error"))["code"]
    for c in (ann, bob, cy, twin):
        await c.send(type="ping")
        await c.wait("pong")
    out["pms"] = {c.name: [[m["from"], m["to"], m["text"]] for m in c.got if m.get("type") == "pm"]
                  for c in (ann, bob, cy, twin)}
    for c in (ann, bob, cy, twin):
        await c.close()
    return out


async def restart1(pa, pb):
    ann = await user("ann", pa, "w")
    await says(ann, "w", ["m1", "m2", "m3"])
    await ann.wait("message", room="w", text="m3")
    await ann.close()
    return {"said": summary(ann, "w")}


# After every process restarted: a page that saw up to `since` comes back, a new one joins.
async def restart2(pa, pb, since, epoch):
    bob = await user("bob", pb, "w", since=int(float(since)), epoch=epoch)
    cy = await user("cy", pa, "w")
    out = {"back": await bob.wait("joined", room="w"), "fresh": summary(cy, "w")}
    await bob.close()
    await cy.close()
    return out


# bob comes back (on the other process) while ann keeps talking, three times: each time
# his `joined` comes before any message of the room, and from his last id on he gets
# every id once, in order.
async def storm(pa, pb):
    room = "s"
    ann = await user("ann", pa, room)
    bob = await user("bob", pb, room)
    await ann.send(type="say", room=room, text="first")
    await bob.wait("message", room=room, text="first")
    out = []
    for round_ in range(3):
        last = bob.messages(room)[-1]
        await bob.close()
        talk = asyncio.create_task(says(ann, room, ["r%d m%d" % (round_, i) for i in range(6)]))
        await asyncio.sleep(0.02 * round_)
        bob = await Client("bob", pb if round_ % 2 else pa).connect()
        await bob.send(type="nick", nick="bob")
        await bob.send(type="join", room=room, since=last["id"], epoch=last["epoch"])
        await talk
        final = "r%d m5" % round_
        await bob.wait("message", room=room, text=final)
        frames = [m["type"] for m in bob.got if m.get("room") == room and m["type"] in ("joined", "message")]
        ids = [m["id"] for m in bob.messages(room)]
        out.append({"first": frames[0], "since": last["id"], "ids": ids})
        await asyncio.sleep(1.2)  # ann's budget refills
    await bob.close()
    await ann.close()
    return out


# bob's process is killed by the spec after DEAD_NOW: ann (on the other) is told the
# room's members without him, with no leave for him.
async def death(pa, pb):
    ann = await user("ann", pa, "d")
    bob = await user("bob", pb, "d")
    await ann.wait("join", room="d", nick="bob")
    mark = len(ann.got)
    print("DEAD_NOW", flush=True)
    await ann.wait_members("d", ["ann"], mark)
    leaves = [m for m in ann.got if m.get("type") == "leave"]
    await ann.close()
    return {"leaves": leaves}


async def main():
    scenario, pa, pb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(await globals()[scenario](pa, pb, *sys.argv[4:])), flush=True)

asyncio.run(main())
