import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.avro.io.JsonEncoder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

/**
 * Apache Avro's own single-object encoding, for tests/test_avro_interop.py.
 *
 * <pre>
 * decode SCHEMA.avsc MESSAGE... [SCHEMA.avsc MESSAGE...]...
 *     Decodes each message file with BinaryMessageDecoder, which refuses a message whose
 *     header is not C3 01 + the schema's CRC-64-AVRO fingerprint, and prints it in Avro's
 *     JSON encoding, one line per message. An argument ending in .avsc switches the schema.
 * encode SCHEMA.avsc DATUMS.jsonl OUT_DIR [SCHEMA.avsc DATUMS.jsonl OUT_DIR]...
 *     Reads each line of DATUMS.jsonl as a datum in Avro's JSON encoding and writes it with
 *     BinaryMessageEncoder to OUT_DIR/N.bin (N = the line's 0-based index).
 * </pre>
 *
 * decode exits 1 naming the file and the reason at the first message it cannot decode; encode
 * exits 1 with Avro's exception at the first datum it cannot read; both exit 2 on bad usage.
 */
public class AvroInterop {
  public static void main(String[] args) throws IOException {
    if (args.length >= 2 && args[0].equals("decode") && args[1].endsWith(".avsc")) {
      decode(List.of(args).subList(1, args.length));
    } else if (args.length > 1 && args.length % 3 == 1 && args[0].equals("encode")) {
      for (int i = 1; i < args.length; i += 3) {
        encode(parse(args[i]), Path.of(args[i + 1]), Path.of(args[i + 2]));
      }
    } else {
      System.err.println(
          "usage: decode (SCHEMA.avsc MESSAGE...)... | encode (SCHEMA.avsc DATUMS OUT_DIR)...");
      System.exit(2);
    }
  }

  static Schema parse(String file) throws IOException {
    return new Schema.Parser().parse(new File(file));
  }

  static void decode(List<String> args) throws IOException {
    Schema schema = null;
    BinaryMessageDecoder<GenericRecord> decoder = null;
    for (String arg : args) {
      if (arg.endsWith(".avsc")) {
        schema = parse(arg);
        decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
        continue;
      }
      GenericRecord record;
      try {
        record = decoder.decode(Files.readAllBytes(Path.of(arg)));
      } catch (Exception e) { // BadHeaderException, MissingSchemaException, a corrupt body
        System.err.println(arg + ": " + e);
        System.exit(1);
        return;
      }
      ByteArrayOutputStream json = new ByteArrayOutputStream();
      JsonEncoder encoder = EncoderFactory.get().jsonEncoder(schema, json);
      new GenericDatumWriter<GenericRecord>(schema).write(record, encoder);
      encoder.flush();
      System.out.write(json.toByteArray());
      System.out.write('\n');
    }
    System.out.flush();
  }

  static void encode(Schema schema, Path datums, Path outDir) throws IOException {
    BinaryMessageEncoder<GenericRecord> encoder =
        new BinaryMessageEncoder<>(GenericData.get(), schema);
    GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema);
    List<String> lines = Files.readAllLines(datums, StandardCharsets.UTF_8);
    Files.createDirectories(outDir);
    for (int i = 0; i < lines.size(); i++) {
      GenericRecord record =
          reader.read(null, DecoderFactory.get().jsonDecoder(schema, lines.get(i)));
      ByteBuffer message = encoder.encode(record);
      byte[] bytes = new byte[message.remaining()];
      message.get(bytes);
      Files.write(outDir.resolve(i + ".bin"), bytes);
    }
  }
}
