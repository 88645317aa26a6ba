"""An office phone calling an outside number through the trunk (not ctrackd's dialplan).

ctrackd follows these calls on AMI only (a missed caller who is called back
leaves the callback list). NO capture in ../shared/asterisk-captures has an
outbound call, so the shapes here are built, not recorded:
- the phone's channel is party A of an ordinary `Dial(<trunk>/<number>,<timeout>)`
  in the admin's own internal context, so every Dial event (Newchannel of
  the trunk leg, DialBegin/DialState/DialEnd, BridgeCreate/Enter/Leave/Destroy,
  HangupRequest, Hangup, Cdr) comes from the same app_dial.c code path as the
  inbound captures 01-09, and is emitted by the same Ringer in the same order
  and header shapes (amievents.py, main/manager_channels.c snapshot order);
- party A is born `Ring` (state 4) in its context with Exten = the number,
  CallerIDNum/Name = the extension's own caller ID, as any channel a phone
  originates (docs.asterisk.org, "Newchannel" event: Channel, ChannelState,
  Context, Exten, CallerIDNum ...); the trunk leg gets CallerIDNum = the
  number dialled and ConnectedLineNum = the office extension, as app_dial.c
  sets it for every called leg (the DID in the inbound captures);
- nobody sets __CTRACK_CALL_ID: the ChanVariable headers are present (they
  are server-wide channelvars) but empty on every event of the call;
- after the Dial, the internal dialplan just ends: the phone's leg hangs up
  with cause 16 whatever the DIALSTATUS (the PBX's own hang-up after the last
  priority), and the CDR follows cdr.c as for inbound calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.simulator.dialplan import InboundCall
from tests.simulator.phones import Caller, Phone

if TYPE_CHECKING:
    from tests.simulator.pbx import Channel, SimulatedAsterisk


class OutboundCall(InboundCall):
    """Party A is the office phone's channel; ringing, bridge and hang-up as InboundCall."""

    def __init__(self, sim: SimulatedAsterisk, endpoint: str, number: str, phone: Caller,
                 callee: Phone, context: str, timeout: int) -> None:
        self.endpoint, self.number, self.context, self.timeout = endpoint, number, context, timeout
        self.dialstring = f"{sim.trunk_tech}/{sim.trunk_peer}/{number}"
        super().__init__(sim, number, phone, {self.dialstring: callee})

    def _party_a(self, did: str, caller: Caller) -> Channel:
        return self.sim.new_phone_channel(self.endpoint, self.number, caller, self.context, self.events)

    async def _inbound(self) -> None:       # the flow of this call: one Dial, then the end
        t = self.trunk
        data = f"{self.dialstring},{self.timeout}"
        t.run_app("Dial", data, 1)
        outcome = await self.ringer.dial(data)
        self.dial_status, self.target = outcome.status, self.dialstring
        if outcome.winner is not None:
            return await self._bridged(outcome.winner)
        await self.finish(16)
