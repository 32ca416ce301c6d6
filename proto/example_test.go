package proto_test

import (
	"encoding/hex"
	"fmt"

	"github.com/flashmemory/flashmemory/proto"
)

// frame returns the wire bytes of one frame, as WriteFrame sends them.
func frame(h proto.Header, m proto.Message) []byte {
	body, err := m.AppendBinary(nil)
	if err != nil {
		panic(err)
	}
	h.BodyLen = uint32(len(body))
	h.CRC = proto.Checksum(body)
	b := make([]byte, proto.HeaderSize, proto.HeaderSize+len(body))
	proto.PutHeader(b, h)
	return append(b, body...)
}

// The hex examples of docs/protocol.md; this test keeps them true.
func Example_wire() {
	fmt.Print("PING request, id 1, body \"hi\":\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpPing, ID: 1},
		&proto.Ping{Data: []byte("hi")})))
	fmt.Print("PING reply:\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpPing, Flags: proto.FlagResponse, ID: 1},
		&proto.Ping{Data: []byte("hi")})))
	fmt.Print("HELLO request, id 1, versions 1..1, client \"py\":\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpHello, ID: 1},
		&proto.Hello{MinVersion: 1, MaxVersion: 1, ClientName: "py"})))
	fmt.Print("Error reply to request 7: unknown session, \"session 42\":\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpClose, Flags: proto.FlagResponse | proto.FlagError, ID: 7},
		&proto.ErrorBody{Code: proto.CodeUnknownSession, Msg: "session 42"})))
	fmt.Print("CYCLE request, id 9: session 42, step 640, position 2600, one 4-byte query:\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpCycle, ID: 9},
		&proto.Cycle{Entries: []proto.CycleEntry{{Session: 42, Step: 640, Position: 2600, Queries: [][]byte{{0x80, 0x3f, 0x00, 0x40}}}}})))
	fmt.Print("CYCLE reply to 9: lease 5, cycle 10, 11 chunks, 1 page, page 0 in slot 3, tail page 1 in slot 4:\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpCycle, Flags: proto.FlagResponse, ID: 9},
		&proto.CycleReply{Results: []proto.CycleResult{{Lease: 5, Cycle: 10,
			Pages: []proto.PageSlot{{Page: 0, Slot: 3}}, Tail: []proto.PageSlot{{Page: 1, Slot: 4}},
			Counters: proto.CycleCounters{Chunks: 11, TotalPages: 1, ResidentPages: 1, ForcedPages: 1, AboveFraction: 0.5, ScoreMicros: 100}}}})))
	fmt.Print("OPEN request, id 2: name \"s\", model \"demo\", persist, any device, default policy, 1 layer (row 512, segments [6 2]), 64 chunks/page, 132-byte keys, 3 target layers, tau 64, 8 slots:\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpOpen, ID: 2},
		&proto.Open{Name: "s", Model: "demo", Persist: true, Device: proto.DeviceAny, Layout: proto.Layout{
			ChunksPerPage: 64, KeyBytes: 132, TargetLayers: 3, CycleSteps: 64, ReserveSlots: 8,
			Layers: []proto.LayerLayout{{RowBytes: 512, Segments: []uint32{6, 2}}}}})))
	fmt.Print("OPEN reply to 2 (one fd attached): session 1, host memory (memfd), region of 4096 bytes, 8 slots, layer 0 at offset 0 with 512-byte rows:\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpOpen, Flags: proto.FlagResponse | proto.FlagFDs, NFDs: 1, ID: 2},
		&proto.OpenReply{Session: 1, Region: proto.Region{RegionDesc: proto.RegionDesc{Size: 4096, Slots: 8,
			Kind: proto.RegionMemfd, Device: proto.NoDevice, Layers: []proto.RegionLayer{{Offset: 0, RowBytes: 512}}}}})))
	fmt.Print("The same reply from a GPU host: a CUDA VMM fd on device 1, region of 2 MiB:\n", hex.Dump(frame(
		proto.Header{Version: 1, Op: proto.OpOpen, Flags: proto.FlagResponse | proto.FlagFDs, NFDs: 1, ID: 2},
		&proto.OpenReply{Session: 1, Region: proto.Region{RegionDesc: proto.RegionDesc{Size: 2 << 20, Slots: 8,
			Kind: proto.RegionCUDA, Device: 1, Layers: []proto.RegionLayer{{Offset: 0, RowBytes: 512}}}}})))
	// Output:
	// PING request, id 1, body "hi":
	// 00000000  46 4d 45 4d 01 00 02 00  00 00 00 00 02 00 00 00  |FMEM............|
	// 00000010  01 00 00 00 00 00 00 00  c2 d9 9d f5 00 00 00 00  |................|
	// 00000020  68 69                                             |hi|
	// PING reply:
	// 00000000  46 4d 45 4d 01 00 02 00  01 00 00 00 02 00 00 00  |FMEM............|
	// 00000010  01 00 00 00 00 00 00 00  c2 d9 9d f5 00 00 00 00  |................|
	// 00000020  68 69                                             |hi|
	// HELLO request, id 1, versions 1..1, client "py":
	// 00000000  46 4d 45 4d 01 00 01 00  00 00 00 00 08 00 00 00  |FMEM............|
	// 00000010  01 00 00 00 00 00 00 00  73 dc 30 23 00 00 00 00  |........s.0#....|
	// 00000020  01 00 01 00 02 00 70 79                           |......py|
	// Error reply to request 7: unknown session, "session 42":
	// 00000000  46 4d 45 4d 01 00 12 00  03 00 00 00 10 00 00 00  |FMEM............|
	// 00000010  07 00 00 00 00 00 00 00  04 24 76 82 00 00 00 00  |.........$v.....|
	// 00000020  07 00 00 00 0a 00 73 65  73 73 69 6f 6e 20 34 32  |......session 42|
	// CYCLE request, id 9: session 42, step 640, position 2600, one 4-byte query:
	// 00000000  46 4d 45 4d 01 00 30 00  00 00 00 00 28 00 00 00  |FMEM..0.....(...|
	// 00000010  09 00 00 00 00 00 00 00  68 22 1a b7 00 00 00 00  |........h"......|
	// 00000020  01 00 00 00 2a 00 00 00  00 00 00 00 80 02 00 00  |....*...........|
	// 00000030  00 00 00 00 28 0a 00 00  00 00 00 00 01 00 00 00  |....(...........|
	// 00000040  04 00 00 00 80 3f 00 40                           |.....?.@|
	// CYCLE reply to 9: lease 5, cycle 10, 11 chunks, 1 page, page 0 in slot 3, tail page 1 in slot 4:
	// 00000000  46 4d 45 4d 01 00 30 00  01 00 00 00 68 00 00 00  |FMEM..0.....h...|
	// 00000010  09 00 00 00 00 00 00 00  3e 20 8c d4 00 00 00 00  |........> ......|
	// 00000020  01 00 00 00 00 00 00 00  05 00 00 00 00 00 00 00  |................|
	// 00000030  0a 00 00 00 00 00 00 00  0b 00 00 00 00 00 00 00  |................|
	// 00000040  01 00 00 00 01 00 00 00  01 00 00 00 00 00 00 00  |................|
	// 00000050  00 00 00 00 00 00 00 00  00 00 00 00 00 00 e0 3f  |...............?|
	// 00000060  00 00 00 00 00 00 00 00  64 00 00 00 00 00 00 00  |........d.......|
	// 00000070  01 00 00 00 00 00 00 00  03 00 00 00 01 00 00 00  |................|
	// 00000080  01 00 00 00 04 00 00 00                           |........|
	// OPEN request, id 2: name "s", model "demo", persist, any device, default policy, 1 layer (row 512, segments [6 2]), 64 chunks/page, 132-byte keys, 3 target layers, tau 64, 8 slots:
	// 00000000  46 4d 45 4d 01 00 10 00  00 00 00 00 59 00 00 00  |FMEM........Y...|
	// 00000010  02 00 00 00 00 00 00 00  3e f1 db c4 00 00 00 00  |........>.......|
	// 00000020  01 00 73 04 00 64 65 6d  6f 01 00 00 00 ff ff ff  |..s..demo.......|
	// 00000030  ff 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
	// 00000040  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
	// 00000050  00 40 00 00 00 84 00 00  00 03 00 00 00 40 00 00  |.@...........@..|
	// 00000060  00 08 00 00 00 01 00 00  00 00 02 00 00 02 00 00  |................|
	// 00000070  00 06 00 00 00 02 00 00  00                       |.........|
	// OPEN reply to 2 (one fd attached): session 1, host memory (memfd), region of 4096 bytes, 8 slots, layer 0 at offset 0 with 512-byte rows:
	// 00000000  46 4d 45 4d 01 00 10 00  05 00 01 00 2c 00 00 00  |FMEM........,...|
	// 00000010  02 00 00 00 00 00 00 00  16 94 63 e3 00 00 00 00  |..........c.....|
	// 00000020  01 00 00 00 00 00 00 00  00 10 00 00 00 00 00 00  |................|
	// 00000030  08 00 00 00 00 00 00 00  ff ff ff ff 01 00 00 00  |................|
	// 00000040  00 00 00 00 00 00 00 00  00 02 00 00              |............|
	// The same reply from a GPU host: a CUDA VMM fd on device 1, region of 2 MiB:
	// 00000000  46 4d 45 4d 01 00 10 00  05 00 01 00 2c 00 00 00  |FMEM........,...|
	// 00000010  02 00 00 00 00 00 00 00  49 0a 93 d2 00 00 00 00  |........I.......|
	// 00000020  01 00 00 00 00 00 00 00  00 00 20 00 00 00 00 00  |.......... .....|
	// 00000030  08 00 00 00 01 00 00 00  01 00 00 00 01 00 00 00  |................|
	// 00000040  00 00 00 00 00 00 00 00  00 02 00 00              |............|
}
