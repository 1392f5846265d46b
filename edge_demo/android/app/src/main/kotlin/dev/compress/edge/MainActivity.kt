package dev.compress.edge

import android.app.Activity
import android.content.Intent
import android.graphics.BitmapFactory
import android.os.Bundle as AndroidBundle
import android.os.SystemClock
import android.widget.Button
import android.widget.LinearLayout
import android.widget.TextView

/** One button: pick a photo, see the INT8 model's top-5 and how long the call took. */
class MainActivity : Activity() {
    private lateinit var classifier: EdgeClassifier
    private lateinit var result: TextView

    override fun onCreate(state: AndroidBundle?) {
        super.onCreate(state)
        result = TextView(this).apply { text = "Pick a photo" }
        val pick = Button(this).apply {
            text = "Pick a photo"
            setOnClickListener {
                startActivityForResult(Intent(Intent.ACTION_GET_CONTENT).setType("image/*"), PICK)
            }
        }
        setContentView(LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            addView(pick)
            addView(result)
        })
        classifier = try {
            EdgeClassifier(assets)
        } catch (e: Exception) {
            result.text = "Cannot load the bundle: ${e.message}"
            pick.isEnabled = false
            return
        }
    }

    @Deprecated("startActivityForResult keeps this demo free of AndroidX")
    override fun onActivityResult(requestCode: Int, resultCode: Int, data: Intent?) {
        super.onActivityResult(requestCode, resultCode, data)
        val uri = data?.data ?: return
        if (requestCode != PICK || resultCode != RESULT_OK) return
        val bitmap = contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it) } ?: run {
            result.text = "Cannot read that file as an image"
            return
        }
        val start = SystemClock.elapsedRealtimeNanos()
        val top = classifier.classify(bitmap)
        val ms = (SystemClock.elapsedRealtimeNanos() - start) / 1e6
        result.text = top.joinToString("\n") { (label, p) -> "%s  %.1f%%".format(label, 100 * p) } +
            "\n\n%.1f ms (resize + INT8 inference, one call)".format(ms)
    }

    override fun onDestroy() {
        if (::classifier.isInitialized) classifier.close()
        super.onDestroy()
    }

    private companion object { const val PICK = 1 }
}
