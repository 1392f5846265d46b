package dev.compress.edge

import android.content.res.AssetManager
import android.graphics.Bitmap
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import org.json.JSONArray
import org.json.JSONObject
import java.security.MessageDigest
import kotlin.math.exp
import kotlin.math.roundToInt

/** What compress's bundle says about the INT8 LiteRT model: preprocess.json plus manifest.json's "litert" record. */
class Bundle(
    val width: Int, val height: Int, val scale: Float, val mean: FloatArray, val std: FloatArray,
    val inputScale: Float, val inputZeroPoint: Int, val outputScale: Float, val outputZeroPoint: Int,
    val labels: List<String>,
) {
    companion object {
        const val MODEL = "model_int8.tflite"

        /** Reads the bundle's files from the APK's assets; refuses a model whose sha256 differs from the manifest's. */
        fun load(assets: AssetManager): Bundle {
            fun text(name: String) = assets.open(name).use { it.readBytes().decodeToString() }
            val manifest = JSONObject(text("manifest.json"))
            val litert = manifest.optJSONObject("litert")
                ?: error("manifest.json has no LiteRT record: build the bundle with compress run ... --litert")
            require(litert.optBoolean("int8_shipped")) { "the bundle ships no $MODEL: ${litert.optString("why")}" }
            val expected = manifest.getJSONObject("files").getJSONObject(MODEL).getString("sha256")
            val actual = MessageDigest.getInstance("SHA-256").digest(assets.open(MODEL).use { it.readBytes() })
                .joinToString("") { "%02x".format(it) }
            require(actual == expected) { "$MODEL sha256 $actual differs from manifest.json's $expected" }
            val pre = JSONObject(text("preprocess.json"))
            fun floats(a: JSONArray) = FloatArray(a.length()) { a.getDouble(it).toFloat() }
            val labels = JSONArray(text("labels.json")).let { a -> List(a.length()) { a.getString(it) } }
            return Bundle(
                width = pre.getInt("width"), height = pre.getInt("height"), scale = pre.getDouble("scale").toFloat(),
                mean = floats(pre.getJSONArray("mean")), std = floats(pre.getJSONArray("std")),
                inputScale = litert.getDouble("int8_input_scale").toFloat(),
                inputZeroPoint = litert.getInt("int8_input_zero_point"),
                outputScale = litert.getDouble("int8_output_scale").toFloat(),
                outputZeroPoint = litert.getInt("int8_output_zero_point"),
                labels = labels,
            )
        }
    }

    /** RGB pixels (0xRRGGBB, row-major, already resized to width × height) → the INT8 model's NHWC input. */
    fun quantizedInput(rgb: IntArray): ByteArray {
        val out = ByteArray(width * height * 3)
        for (i in 0 until width * height) {
            val channels = intArrayOf((rgb[i] shr 16) and 0xFF, (rgb[i] shr 8) and 0xFF, rgb[i] and 0xFF)
            for (c in 0..2) {
                val normalised = (channels[c] * scale - mean[c]) / std[c]
                val q = (normalised / inputScale).roundToInt() + inputZeroPoint
                out[i * 3 + c] = q.coerceIn(-128, 127).toByte()
            }
        }
        return out
    }

    /** The INT8 logits → (label, probability), most probable first. */
    fun topK(raw: ByteArray, k: Int): List<Pair<String, Float>> {
        val logits = FloatArray(raw.size) { (raw[it] - outputZeroPoint) * outputScale }
        val max = logits.max()
        val exps = logits.map { exp(it - max) }
        val total = exps.sum()
        return exps.indices.sortedByDescending { exps[it] }.take(k).map { labels[it] to exps[it] / total }
    }
}

/** Runs model_int8.tflite on the phone's CPU with LiteRT's CompiledModel API (XNNPACK underneath). */
class EdgeClassifier(assets: AssetManager) : AutoCloseable {
    val bundle = Bundle.load(assets)
    private val model = CompiledModel.create(assets, Bundle.MODEL, CompiledModel.Options(Accelerator.CPU))
    private val inputs = model.createInputBuffers()
    private val outputs = model.createOutputBuffers()

    /** Top-5 (label, probability) for a photo; bilinear resize as preprocess.json says (see mobile/README.md). */
    fun classify(photo: Bitmap): List<Pair<String, Float>> {
        val img = Bitmap.createScaledBitmap(photo, bundle.width, bundle.height, true)
        val pixels = IntArray(bundle.width * bundle.height)
        img.getPixels(pixels, 0, bundle.width, 0, 0, bundle.width, bundle.height)
        inputs[0].writeInt8(bundle.quantizedInput(pixels))
        model.run(inputs, outputs)
        return bundle.topK(outputs[0].readInt8(), 5)
    }

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }
}
